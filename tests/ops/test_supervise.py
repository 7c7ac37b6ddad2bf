"""The one supervisor of child processes (ops.supervise): a child that ignores SIGTERM is
killed with its whole group, a polite one stops on SIGTERM, one that exits during start-up or
never answers is reported with its log, and a restarted child's log keeps every run."""

from __future__ import annotations

import http.server
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.supervise import Supervised, stop_all

_STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""
SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is gone for our purpose once it is not running.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _child(tmp_path: Path, name: str, argv: list[str], url: str = "http://x") -> Supervised:
    return Supervised(name, argv, dict(os.environ), tmp_path / f"{name}.log", url)


def test_a_child_that_ignores_sigterm_is_killed_with_its_whole_group(tmp_path: Path) -> None:
    kid = _child(tmp_path, "stubborn", [sys.executable, "-c", _STUBBORN]).start()
    deadline = time.monotonic() + 20
    while not kid.this_run_log().strip().splitlines()[1:] and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(kid.this_run_log().strip().splitlines()[-1])
    started = time.monotonic()
    stop_all([kid], grace_s=0.5)
    assert time.monotonic() - started < 10
    assert kid.exit_codes == [-signal.SIGKILL]
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the child's own process was left behind"


def test_a_polite_child_stops_on_sigterm_and_stopping_twice_is_harmless(tmp_path: Path) -> None:
    kid = _child(tmp_path, "polite", SLEEP).start()
    kid.stop(timeout_s=10)
    kid.stop()
    assert kid.exit_codes == [-signal.SIGTERM] and not kid.alive()


def test_kill_is_a_crash_and_a_restart_appends_to_the_log(tmp_path: Path) -> None:
    kid = _child(tmp_path, "crashy", SLEEP).start()
    kid.kill()
    kid.start()
    kid.stop()
    assert kid.exit_codes == [-signal.SIGKILL, -signal.SIGTERM]
    assert kid.log_text().count("===== start crashy") == 2
    assert kid.this_run_log().startswith("===== start crashy")


def test_a_child_that_exits_during_start_up_is_reported_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    kid = _child(tmp_path, "broken", argv, "http://127.0.0.1:9").start()
    with pytest.raises(RuntimeError, match="broken exited with code 3") as caught:
        kid.wait_ready(timeout_s=20)
    assert "no model here" in str(caught.value)
    stop_all([kid])


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_ready_needs_every_path_and_the_log_line(tmp_path: Path, health_server: str) -> None:
    argv = [sys.executable, "-c", "import time; print('Worker ready', flush=True); time.sleep(60)"]
    kid = _child(tmp_path, "web", argv, health_server).start()
    try:
        assert kid.wait_ready(timeout_s=20, ready_line="Worker ready") < 20
        with pytest.raises(RuntimeError, match="web not ready after 1 s"):
            kid.wait_ready(timeout_s=1, ready_paths=("/health", "/ready"))
    finally:
        kid.stop()
