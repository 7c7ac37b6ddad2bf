"""The demo's dashboard: one self-contained HTML file with hand-written inline SVG charts.

Pure: :func:`render_dashboard` takes the demo's :class:`ops.demo_view.Tally` and its
``summary.json`` record and returns HTML text -- signals over time, the churn-risk
distribution, the bid-multiplier distribution, the top users and, for generated traffic, the
churn scores against the generator's truth (``summary["truth"]``, :mod:`ops.demo_truth`).
No scripts, styles or images are fetched from anywhere (the file opens offline, from a mail
attachment or a CI artefact), and no plotting library is needed, so the demo runs on the
worker's dependencies alone. Every piece of data-derived text (user ids come from input
files) is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ops.demo_view import BID_CLASSES, KINDS, LABELS, Sample, Tally, histogram

COLORS: Final = {
    "events": "#6b7280",
    "demand": "#2563eb",
    "churn": "#dc2626",
    "dlq": "#a16207",
    "bids": "#059669",
    "alerts": "#7c3aed",
    "quality": "#0891b2",
    "categories": "#16a34a",
}
MAX_POINTS: Final = 400
"""Timeline points per series drawn (longer runs are thinned evenly; the last point is kept)."""
W, H = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 30, 40
"""Plot margins; the top one holds the legend."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 1.2, 1.5, 2, 2.5, ... 8 × 10^k)."""
    if value <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:g}"


def thin(samples: Sequence[Sample], max_points: int = MAX_POINTS) -> list[Sample]:
    """At most ``max_points`` samples, evenly spaced, always keeping the last."""
    if len(samples) <= max_points:
        return list(samples)
    step = (len(samples) - 1) / (max_points - 1)
    return [samples[round(i * step)] for i in range(max_points)]


def _frame(y_max: float, x_labels: Sequence[tuple[float, str]], x_title: str, y_title: str) -> str:
    """Axes, horizontal grid with labels, x tick labels (x given as 0..1 fractions)."""
    parts = []
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    for i in range(5):
        y = PAD_T + plot_h * (1 - i / 4)
        parts.append(
            f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{W - PAD_R}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(_fmt(y_max * i / 4))}'
            "</text>"
        )
    for fraction, label in x_labels:
        x = PAD_L + plot_w * fraction
        parts.append(
            f'<text x="{x:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append(
        f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}" stroke="#9ca3af"/>'
        f'<text x="{PAD_L + plot_w / 2:.1f}" y="{H - 6}" text-anchor="middle">{_e(x_title)}</text>'
        f'<text x="14" y="{PAD_T + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {PAD_T + plot_h / 2:.1f})">{_e(y_title)}</text>'
    )
    return "".join(parts)


def _svg(title: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" '
        f'height="{H}" role="img" aria-label="{_e(title)}" font-family="sans-serif" '
        f'font-size="11" fill="#374151">{body}</svg>'
    )


def timeline_svg(samples: Sequence[Sample]) -> str:
    """Cumulative events replayed and records out per kind, against seconds of the run."""
    points = thin(samples)
    series: dict[str, list[tuple[float, float]]] = {"events": [(s.t, s.events) for s in points]}
    for kind in KINDS:
        series[kind] = [(s.t, s.counts.get(kind, 0)) for s in points]
    t_max = max((s.t for s in points), default=0.0) or 1.0
    y_max = _nice_max(max((v for pts in series.values() for _, v in pts), default=0.0))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    ticks = [(i / 4, f"{t_max * i / 4:.0f}s") for i in range(5)]
    body = [_frame(y_max, ticks, "seconds since the replay started", "cumulative records")]
    legend_x: float = PAD_L + 8
    for name, pts in series.items():
        if not pts:
            continue
        coords = " ".join(
            f"{PAD_L + plot_w * t / t_max:.1f},{PAD_T + plot_h * (1 - v / y_max):.1f}"
            for t, v in pts
        )
        body.append(
            f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="2" points="{coords}"/>'
        )
    for name in series:
        label = "events replayed" if name == "events" else LABELS[name]
        body.append(
            f'<rect x="{legend_x:.1f}" y="6" width="10" height="10" fill="{COLORS[name]}"/>'
            f'<text x="{legend_x + 14:.1f}" y="15">{_e(label)}</text>'
        )
        legend_x += 26 + 6.6 * len(label)  # ~6.6 px per character at font-size 11
    if not points:
        body.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no samples</text>')
    return _svg("signals over time", "".join(body))


def histogram_svg(
    counts: Sequence[int], lo: float, hi: float, *, color: str, x_title: str, title: str
) -> str:
    """Bars of ``counts`` over ``[lo, hi]`` (equal bins), users on the y axis."""
    bins = len(counts)
    y_max = _nice_max(max(counts, default=0))
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    ticks = [(i / 4, f"{lo + (hi - lo) * i / 4:.2f}") for i in range(5)]
    body = [_frame(y_max, ticks, x_title, "users")]
    bar_w = plot_w / max(bins, 1)
    for i, n in enumerate(counts):
        h = plot_h * n / y_max
        low, high = lo + (hi - lo) * i / bins, lo + (hi - lo) * (i + 1) / bins
        body.append(
            f'<rect x="{PAD_L + i * bar_w + 1:.1f}" y="{PAD_T + plot_h - h:.1f}" '
            f'width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{low:.3f}–{high:.3f}: {n:,} users</title></rect>"
        )
    if not any(counts):
        body.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text>')
    return _svg(title, "".join(body))


def calibration_svg(bins: Sequence[Mapping[str, Any]]) -> str:
    """Observed churn rate against mean score per score bin, with the diagonal of perfect
    calibration; a point's area follows its users (``ops.demo_truth.evaluate``'s bins)."""
    plot_w, plot_h = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    ticks = [(i / 4, f"{i / 4:.2f}") for i in range(5)]
    body = [_frame(1.0, ticks, "mean churn score in the bin", "true churners")]

    def xy(x: float, y: float) -> tuple[float, float]:
        return PAD_L + plot_w * x, PAD_T + plot_h * (1 - y)

    (x0, y0), (x1, y1) = xy(0, 0), xy(1, 1)
    body.append(
        f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" stroke="#9ca3af" '
        'stroke-dasharray="4 4"/>'
        f'<text x="{PAD_L + 8}" y="18">dashed: perfectly calibrated</text>'
    )
    most = max((int(b["users"]) for b in bins), default=1) or 1
    points = [(float(b["mean_score"]), float(b["churn_rate"]), int(b["users"])) for b in bins]
    if points:
        coords = " ".join(f"{xy(x, y)[0]:.1f},{xy(x, y)[1]:.1f}" for x, y, _ in points)
        body.append(
            f'<polyline fill="none" stroke="{COLORS["churn"]}" stroke-width="1.5" '
            f'points="{coords}"/>'
        )
    for x, y, n in points:
        cx, cy = xy(x, y)
        r = 3 + 9 * math.sqrt(n / most)  # area, not radius, follows the count
        body.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{COLORS["churn"]}" '
            f'fill-opacity="0.5"><title>score {x:.3f}: {y:.1%} churned, {n:,} users</title>'
            "</circle>"
        )
    if not points:
        body.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle">no data</text>')
    return _svg("calibration against the generator's truth", "".join(body))


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def truth_section(truth: Mapping[str, Any]) -> str:
    """The "predictions vs truth" panel: AUC, calibration, alert precision, score spread."""
    q = truth.get("score_quantiles") or {}
    spread = " · ".join(f"{k} {v:.3f}" for k, v in q.items()) or "n/a"
    cards = [
        ("churn ROC-AUC", _num(truth.get("roc_auc"))),
        ("true churners", f"{truth.get('true_churners', 0):,} of {truth.get('users_scored', 0):,}"),
        ("base rate", _pct(truth.get("base_rate"))),
        ("mean score", _num(truth.get("mean_score"))),
        (
            "alerted who churn",
            f"{_pct(truth.get('alerted_precision'))} "
            f"({truth.get('alerted_true_churners', 0):,}/{truth.get('alerted_users', 0):,})",
        ),
    ]
    cards_html = "".join(f'<div class="card">{_e(n)}<b>{_e(v)}</b></div>' for n, v in cards)
    rows = [
        (f"{b['mean_score']:.3f}", _pct(b["churn_rate"]), f"{b['users']:,}")
        for b in truth.get("calibration", [])
    ]
    return (
        "<section><h2>Predictions vs the generator's truth</h2>"
        f'<div class="cards">{cards_html}</div>'
        f"{calibration_svg(truth.get('calibration', []))}"
        f"<p>score spread: {_e(spread)}</p>"
        "<p>Each user's current churn score against whether the generator makes them leave "
        "during the replayed span; alerted: users the alerter raised a churn alert for.</p>"
        "</section><section><h2>Calibration table</h2>"
        + _table(["mean score", "true churners", "users"], rows)
        + "</section>"
    )


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}">none</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111827;max-width:1340px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:0 0 8px}
.meta{color:#6b7280;margin-bottom:16px}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:18px}.grid{display:flex;flex-wrap:wrap;gap:16px}
section{border:1px solid #e5e7eb;border-radius:6px;padding:12px}
table{border-collapse:collapse;font-size:13px}td,th{padding:3px 10px;text-align:left;
border-bottom:1px solid #f3f4f6}svg text{fill:#374151}
"""


def quality_section(tally: Tally) -> str:
    """The online evaluation: each window end whose horizon passed during the run, the
    model's quality over the users it scored there (``model-quality``)."""
    if not tally.quality:
        return (
            "<section><h2>Online evaluation</h2><p>No window end's horizon passed during "
            "the run: nothing to evaluate yet.</p></section>"
        )
    rows = [
        (
            str(r.get("window_end", ""))[:10],
            r.get("model_version", ""),
            f"{int(r.get('population', 0)):,}",
            _num(r.get("orders", {}).get("mae")),
            _pct(r.get("orders", {}).get("bias")),
            _num(r.get("churn", {}).get("roc_auc")),
            _num(r.get("churn", {}).get("brier")),
        )
        for _, r in sorted(tally.quality.items())
    ]
    return (
        "<section><h2>Online evaluation (model-quality)</h2>"
        "<p>Predictions made at each window close, joined with what the users did over the "
        "next horizon, as the worker computes it in the stream.</p>"
        + _table(
            ["window end", "model", "users", "orders MAE", "orders bias", "churn AUC", "Brier"],
            rows,
        )
        + "</section>"
    )


def category_section(tally: Tally, top: int = 10) -> str:
    """Category demand: each series' newest forecast, the ``top`` by P50 units of the next
    window, with the P10-P90 interval of every horizon window (``category-demand``)."""
    if not tally.categories:
        return (
            "<section><h2>Category demand</h2><p>No category forecast: the model directory "
            "has no category model (<code>train-and-export --demand</code>), or no window end "
            "had the model's input windows of history yet.</p></section>"
        )
    records = sorted(
        tally.categories.values(),
        key=lambda r: (-float(r["horizon"][0]["units"]["p50"]), str(r["series"])),
    )[:top]
    horizon = len(records[0]["horizon"])
    hi = max(float(h["units"]["p90"]) for r in records for h in r["horizon"]) or 1.0
    width, row_h, left = 420, 18, 90
    rows_svg = []
    for i, r in enumerate(records):
        y = 10 + i * row_h * horizon
        name = _e(str(r["series"])[:14])
        rows_svg.append(f'<text x="0" y="{y + 10}" font-size="11">{name}</text>')
        for h, w in enumerate(r["horizon"]):
            u = w["units"]
            yy = y + h * row_h + 6
            x10, x50, x90 = (left + width * float(u[p]) / hi for p in ("p10", "p50", "p90"))
            rows_svg.append(
                f'<line x1="{x10:.1f}" y1="{yy}" x2="{x90:.1f}" y2="{yy}" '
                f'stroke="{COLORS["categories"]}" stroke-width="5" opacity="0.35"/>'
                f'<circle cx="{x50:.1f}" cy="{yy}" r="3.5" fill="{COLORS["categories"]}"/>'
            )
    height = 20 + len(records) * row_h * horizon
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" '
        f'height="{height}" role="img" '
        f'aria-label="category forecasts">{"".join(rows_svg)}'
        f'<text x="{left}" y="{height - 2}" font-size="10">0</text>'
        f'<text x="{left + width - 30}" y="{height - 2}" font-size="10">{hi:,.0f} units</text>'
        "</svg>"
    )
    first = records[0]
    table = _table(
        ["series", "window end", "model"]
        + [f"units, window {h + 1}: P50 [P10-P90]" for h in range(horizon)],
        [
            (
                r["series"],
                str(r.get("window_end", ""))[:10],
                r.get("model_version", ""),
                *(
                    f"{w['units']['p50']:,.1f} [{w['units']['p10']:,.1f}-{w['units']['p90']:,.1f}]"
                    for w in r["horizon"]
                ),
            )
            for r in records
        ],
    )
    return (
        f"<section><h2>Category demand ({len(tally.categories):,} series, level "
        f"{_e(first.get('level', ''))})</h2><p>Each series' newest forecast: units in each of "
        f"the next {horizon} windows, P50 (dot) within P10-P90 (bar); the top {len(records)} "
        "by next-window P50.</p>" + svg + table + "</section>"
    )


def render_dashboard(tally: Tally, summary: Mapping[str, Any], *, title: str = "") -> str:
    """The dashboard HTML for a demo run (module doc)."""
    cards = [
        ("events replayed", f"{summary.get('events_sent', 0):,}"),
        ("replay", f"{summary.get('replay_seconds') or 0:g} s"),
        ("events/s", f"{summary.get('events_per_second') or 0:,.0f}"),
    ] + [(LABELS[k], f"{tally.counts[k]:,}") for k in KINDS]
    cards_html = "".join(f'<div class="card">{_e(n)}<b>{_e(v)}</b></div>' for n, v in cards)
    churn = histogram_svg(
        histogram(tally.churn_values(), 0.0, 1.0, 20),
        0.0,
        1.0,
        color=COLORS["churn"],
        x_title="current churn probability",
        title="churn-risk distribution",
    )
    bounds = tally.bounds
    lo, hi = (bounds.floor, bounds.cap) if bounds else (0.0, 2.0)
    bids = histogram_svg(
        histogram(tally.bid_values(), lo, hi, 15),
        lo,
        hi,
        color=COLORS["bids"],
        x_title="current bid multiplier",
        title="bid multiplier distribution",
    )
    dist = tally.bid_distribution()
    dist_text = " · ".join(f"{name} {dist[name]:,}" for name in BID_CLASSES)
    if bounds:
        dist_text += f" (floor ×{bounds.floor:g}, neutral ×{bounds.neutral:g}, cap ×{bounds.cap:g})"
    state = "interrupted" if summary.get("interrupted") else "completed"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>clicksignals demo</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>clicksignals demo</h1>"
        f'<div class="meta">{_e(title)} · run {_e(state)} · wall time '
        f"{_e(summary.get('wall_seconds', 0))} s · distributions are of each user's current "
        f"value</div>"
        f'<div class="cards">{cards_html}</div>'
        '<div class="grid">'
        f"<section><h2>Signals over time</h2>{timeline_svg(tally.samples)}</section>"
        f"<section><h2>Churn-risk distribution ({len(tally.churn):,} users)</h2>{churn}"
        f"</section>"
        f"<section><h2>Bid multiplier distribution ({len(tally.bids):,} users)</h2>{bids}"
        f"<p>{_e(dist_text)}</p></section>"
        "<section><h2>Top churn risks</h2>"
        + _table(["user", "churn probability"], [(u, f"{p:.4f}") for u, p in tally.top_churn(10)])
        + "</section><section><h2>Top bid multipliers</h2>"
        + _table(["user", "multiplier"], [(u, f"×{m:.3f}") for u, m in tally.top_bids(10)])
        + "</section><section><h2>Counts</h2>"
        + _table(
            ["output", "records"],
            [(LABELS[k], f"{tally.counts[k]:,}") for k in KINDS]
            + [("users alerted", f"{len(tally.alerted):,}"), ("malformed", tally.malformed)]
            + [(f"dead letters: {r}", n) for r, n in sorted(tally.dlq_reasons.items())],
        )
        + "</section>"
        + quality_section(tally)
        + category_section(tally)
        + (truth_section(summary["truth"]) if summary.get("truth") else "")
        + "</div></body></html>\n"
    )


__all__ = [
    "calibration_svg",
    "category_section",
    "histogram_svg",
    "quality_section",
    "render_dashboard",
    "thin",
    "timeline_svg",
    "truth_section",
]
