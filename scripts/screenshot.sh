#!/usr/bin/env bash
# The README's dashboard screenshot (docs/img/dashboard.png), taken by headless Chromium from
# Debian's packages, so that the picture stays what the demo really draws.
#
#   bash scripts/screenshot.sh                  # run the demo (scripts/demo.sh --quiet), then shoot
#   bash scripts/screenshot.sh --no-demo        # shoot the last run's var/demo/out/dashboard.html
#   bash scripts/screenshot.sh --html F --out P # any dashboard file, any PNG
#
# Chromium: `chromium` (or `chromium-headless-shell`) on PATH; if neither is, and this runs as
# root on Debian/Ubuntu, it is installed with apt-get (`chromium`, plus a font). The dashboard
# is one self-contained file (inline SVG, no scripts, nothing fetched), so the browser needs no
# network. CLICKSIGNALS_SCREENSHOT_SIZE=W,H sets the window (default 1280,2900: the whole page).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

html=var/demo/out/dashboard.html
out=docs/img/dashboard.png
run_demo=1
while [ $# -gt 0 ]; do
  case "$1" in
    --no-demo) run_demo=0 ;;
    --html) html="$2"; run_demo=0; shift ;;
    --out) out="$2"; shift ;;
    *) echo "screenshot.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

browser=""
find_browser() {
  for b in chromium chromium-headless-shell chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then browser="$b"; return 0; fi
  done
  return 1
}
if ! find_browser; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "screenshot.sh: installing Chromium from the distribution's packages" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium fonts-dejavu-core >/dev/null
    find_browser
  else
    echo "screenshot.sh: no chromium on PATH; install Debian's 'chromium' package" >&2
    exit 1
  fi
fi

if [ "$run_demo" = 1 ]; then
  bash scripts/demo.sh --quiet
fi
if [ ! -f "$html" ]; then
  echo "screenshot.sh: $html not found (run the demo first)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
size="${CLICKSIGNALS_SCREENSHOT_SIZE:-1280,2900}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: root (CI, containers) cannot use Chromium's sandbox; the page is our own file.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
  --user-data-dir="$profile" --window-size="$size" --screenshot="$(realpath -m "$out")" \
  "file://$(realpath "$html")" 2>/dev/null
test -s "$out"
echo "screenshot: $out (from $html, $browser, window $size)"
