"""Training at scale: ``train-and-export --engine duckdb`` on generated shops of growing size.

``python -m bench.scale [--events 1000000,5000000] [--days 182] [--events-per-user 17 | --users N]``

For each size ``N`` a child process writes a generated canonical history as Parquet shards
(blocks of :data:`BLOCK_USERS` users, each block simulated with its own seed and its user ids
prefixed by the block, so no process ever holds more than a block), with ``N / events-per-user``
users over ``days`` (default 17 events per user over 26 weeks: REES46's October 2019 file has
42M events from ~3M users, 14 a month; a shop's history holds many one-visit users). Then
``train-and-export --engine duckdb --events 'shards/*.parquet'`` runs as a child with the
command's defaults (only ``--out`` and ``--duckdb-temp-dir`` given). From its report the
phase takes each stage's wall time and peak RSS (:mod:`training.resources`); around it, the
whole command's wall time and ``VmHWM`` (the child's own high-water mark, polled, as
:mod:`bench.training` does). Figures, not assertions. Results: ``scale.json``, ``scale.md``
and ``scale.png`` (wall time and peak RSS against events) in ``bench/results`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("bench.scale")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BLOCK_USERS = 100_000
"""Users simulated and written at a time (about 1.7M events at the defaults)."""
SEED = 7


def users_for(events: int, events_per_user: float) -> int:
    return max(1, round(events / events_per_user))


def write_shards(directory: Path, events: int, users: int, days: int, seed: int) -> dict[str, Any]:
    """Generated canonical Parquet shards of about ``events`` events from ``users`` users.

    The generator's session rate is scaled so that the users give about the events asked for
    (:func:`ingest.generator.users_for_events` is its own rough inverse); every block has the
    same rate, so the shop is one shop cut by users.
    """
    import duckdb

    from ingest.generator import GeneratorConfig, generate_clickstream, users_for_events

    base = GeneratorConfig()
    scale = users_for_events(events, days, base) / users
    config = GeneratorConfig(mean_sessions_per_day=base.mean_sessions_per_day * scale)
    # users_for_events is rough (~8 % here): one correction from a sample of the same shop.
    sample = min(users, 20_000)
    got = len(generate_clickstream(sample, start="2024-01-01", days=days, seed=seed, config=config))
    if got:
        scale *= (events / users) / (got / sample)
        config = GeneratorConfig(mean_sessions_per_day=base.mean_sessions_per_day * scale)
    directory.mkdir(parents=True, exist_ok=True)
    total = written = 0
    con = duckdb.connect()
    for block, start in enumerate(range(0, users, BLOCK_USERS)):
        n = min(BLOCK_USERS, users - start)
        frame = generate_clickstream(
            n, start="2024-01-01", days=days, seed=seed + block, config=config
        )
        frame["user_id"] = f"b{block}-" + frame["user_id"].astype(str)
        path = directory / f"part-{block:04d}.parquet"
        con.register("block", frame)
        con.execute(f"COPY block TO '{path}' (FORMAT parquet)")
        con.unregister("block")
        total += len(frame)
        written += path.stat().st_size
        del frame
    con.close()
    return {"events": total, "users": users, "days": days, "bytes": written}


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _python() -> str:
    return sys.executable


def run_size(
    events: int, days: int, events_per_user: float, work: Path, users: int | None = None
) -> dict[str, Any]:
    """One size: shards by a child, then the training command by another, both measured
    (``users``: this many users whatever the size, else ``events / events_per_user``)."""
    users = users if users is not None else users_for(events, events_per_user)
    shards = work / f"events-{events}"
    started = time.perf_counter()
    gen = subprocess.run(
        [
            _python(),
            "-m",
            "bench.scale",
            "--child-generate",
            str(shards),
            str(events),
            str(users),
            str(days),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    data = orjson.loads(gen.stdout.strip().splitlines()[-1])
    data["generation_seconds"] = round(time.perf_counter() - started, 1)
    out = work / f"model-{events}"
    argv = [
        str(Path(_python()).with_name("train-and-export")),
        "--engine",
        "duckdb",
        "--events",
        str(shards / "part-*.parquet"),
        "--duckdb-temp-dir",
        str(work / "duckdb"),
        "--out",
        str(out),
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    log_path = work / f"train-{events}.log"
    started = time.perf_counter()
    with log_path.open("w") as sink:
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
        peak = 0
        while child.poll() is None:
            peak = max(peak, _vm_hwm_kb(child.pid))
            time.sleep(0.1)
    wall = time.perf_counter() - started
    result: dict[str, Any] = {
        "data": data,
        "command": " ".join(argv),
        "returncode": child.returncode,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "log": str(log_path),
    }
    report_path = out / "report.json"
    if child.returncode == 0 and report_path.exists():
        report = orjson.loads(report_path.read_bytes())
        extra = report.get("extra", report)
        result["stages"] = extra["resources"]["stages"]
        result["samples"] = extra["training"].get("samples")
        result["epochs"] = extra["training"].get("epochs_run")
        result["users"] = extra["split"].get("users")
    else:
        result["tail"] = log_path.read_text()[-2000:]
    return result


def render(res: dict[str, Any]) -> str:
    lines = [
        "# Training at scale: `train-and-export --engine duckdb` on generated shops",
        "",
        f"Measured {res['date']} by `{res['command']}` on {res['machine']} (a shared 2-core "
        "machine). Each size: generated canonical Parquet shards, then the training command "
        "with its defaults in a child process; per-stage figures from its report, the whole "
        "command's wall time and high-water mark (VmHWM) around it.",
        "",
        "| events | users with an event | Parquet MB | stage | wall s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        d = run["data"]
        # The report's count (users with an event); the generator's ids include some without.
        users = (run.get("users") or {}).get("total", d["users"])
        head = f"| {d['events']:,} | {users:,} | {d['bytes'] / 1e6:,.0f} |"
        if run["returncode"] != 0:
            lines.append(
                f"{head} failed (exit {run['returncode']}) | {run['wall_seconds']} | "
                f"{run['peak_rss_mb']:,.0f} |"
            )
            continue
        for st in run["stages"]:
            lines.append(f"{head} {st['stage']} | {st['seconds']:.1f} | {st['peak_rss_mb']:,.0f} |")
            head = "| | | |"
        lines.append(
            f"{head} **whole command** | **{run['wall_seconds']:.1f}** | "
            f"**{run['peak_rss_mb']:,.0f}** |"
        )
    lines += [""]
    for run in res["runs"]:
        s = run.get("samples")
        if s:
            lines.append(
                f"- {run['data']['events']:,} events: {s['kept']:,} training rows of "
                f"{s['rows_before_cap']:,} (kept fraction {s['kept_fraction']:.3f}), "
                f"{run.get('epochs')} epochs{_fitted_on(run)}; {_feature_rate(run)}."
            )
    lines += ["", "![wall time and peak RSS against events](scale.png)", ""]
    return "\n".join(lines)


def _fitted_on(run: dict[str, Any]) -> str:
    users = run.get("users") or {}
    if "fitted_on" not in users:
        return ""
    return (
        f", fitted on {users['fitted_on']:,} of {users['total']:,} users, "
        f"{users['cutoff']:,} scored at the cutoff"
    )


def _feature_rate(run: dict[str, Any]) -> str:
    """Events per second of feature building: the ``features`` stage (cells in SQL and the
    fitted users' tensor), and with ``read`` (loading and validating the files) before it."""
    seconds = {st["stage"]: st["seconds"] for st in run["stages"]}
    events = run["data"]["events"]
    features = seconds.get("features", 0.0)
    both = features + seconds.get("read", 0.0)
    if not features or not both:
        return "feature building not timed"
    return (
        f"features at {events / features / 1e6:.2f}M events/s "
        f"({events / both / 1e6:.2f}M/s with reading)"
    )


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in res["runs"] if r["returncode"] == 0]
    if not runs:
        return
    events = [r["data"]["events"] / 1e6 for r in runs]
    fig, (wall, rss) = plt.subplots(1, 2, figsize=(11, 4))
    stages = [st["stage"] for st in runs[0]["stages"]]
    for name in stages:
        wall.plot(
            events,
            [next(s["seconds"] for s in r["stages"] if s["stage"] == name) for r in runs],
            marker="o",
            label=name,
        )
        rss.plot(
            events,
            [next(s["peak_rss_mb"] for s in r["stages"] if s["stage"] == name) for r in runs],
            marker="o",
            label=name,
        )
    wall.plot(events, [r["wall_seconds"] for r in runs], "k--", marker="s", label="whole command")
    rss.plot(
        events, [r["peak_rss_mb"] for r in runs], "k--", marker="s", label="whole command (VmHWM)"
    )
    wall.set(xlabel="events (millions)", ylabel="wall time (s)", title="wall time per stage")
    rss.set(xlabel="events (millions)", ylabel="peak RSS (MB)", title="peak RSS per stage")
    for ax in (wall, rss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    plot(res, out / "scale.png")
    (out / "scale.md").write_text(render(res))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child-generate"]:
        directory, events, users, days = args[1:5]
        print(
            orjson.dumps(
                write_shards(Path(directory), int(events), int(users), int(days), SEED)
            ).decode()
        )
        return 0
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--events", default="1000000,5000000", help="comma-separated sizes")
    p.add_argument("--days", type=int, default=182)
    p.add_argument("--events-per-user", type=float, default=17.0)
    p.add_argument(
        "--users",
        type=int,
        help="the same number of users at every size (more events per user as sizes grow): "
        "what memory does with events alone",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--work", type=Path, help="where shards and models go (a temp dir)")
    a = p.parse_args(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sizes = [int(float(x)) for x in a.events.split(",")]
    res: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m bench.scale " + " ".join(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "days": a.days,
        "events_per_user": a.events_per_user,
        "users": a.users,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        for n in sizes:
            log.info("%d events: generating and training", n)
            run = run_size(n, a.days, a.events_per_user, Path(tmp), a.users)
            log.info(
                "%d events: exit %d, %.1f s, peak %.0f MB",
                n,
                run["returncode"],
                run["wall_seconds"],
                run["peak_rss_mb"],
            )
            res["runs"].append(run)
            write_results(res, a.out)  # after each size: a long run stopped keeps what it did
    log.info("results: %s", a.out / "scale.md")
    return 0 if all(r["returncode"] == 0 for r in res["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
