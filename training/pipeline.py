"""train-and-export, step by step: events → samples → model → evaluation → ONNX + manifest.

Owns the time split (explicit instants, no shuffling across time, normalisation and early
stopping on the past only), the evaluation against baselines on the held-out period, and
the files written into the output directory. Each step is a function so tests can run the
pipeline on a tiny generated history.

Split, for a cutoff ``C`` and horizon ``H`` windows (window boundaries laid on ``C``):

* training samples end at windows whose labels close before the validation ones start
  (purged: no training label overlaps a validation label period);
* validation: the last ``val_windows`` window ends whose labels still close by ``C``;
* test: window ends from ``C`` on, as long as the data covers their horizon; the sample
  ending exactly at ``C`` is the evaluation cutoff written to ``predictions.csv``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.manifest import Manifest, Thresholds
from features.windows import NormStats, WindowSpec, contract_fingerprint
from training.baselines import baselines
from training.dataset import Samples, build_tensor, first_window, samples_at, to_event_arrays

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


class TrainingError(RuntimeError):
    """The inputs cannot give an honest model; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    out: Path
    cutoff_ms: int
    window_ms: int = 7 * DAY_MS
    seq_len: int = 12
    horizon: int = 4
    lookback: int | None = None
    end_ms: int | None = None
    val_windows: int = 4
    epochs: int = 30
    seed: int = 7
    cell: str = "lstm"
    units: int = 64
    quantize: bool = False
    cv_folds: int = 0
    """Rolling-origin folds before the cutoff (0: none)."""
    min_users: int = 50
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(
            self.window_ms,
            self.cutoff_ms,
            self.seq_len,
            self.horizon,
            self.lookback if self.lookback is not None else self.seq_len,
        )


@dataclass
class Split:
    train: Samples
    val: Samples
    test: Samples
    cutoff: Samples
    train_windows: tuple[int, int]
    val_windows: tuple[int, int]
    test_windows: tuple[int, int]


def split_samples(events: pd.DataFrame, cfg: TrainConfig) -> Split:
    """Build the three time-ordered sample sets (see the module docstring)."""
    spec = cfg.spec
    arrays, user_ids = to_event_arrays(events)
    start_ms, stop_ms = int(arrays.time_ms.min()), int(arrays.time_ms.max())
    end_ms = cfg.end_ms if cfg.end_ms is not None else stop_ms + 1
    if not start_ms < cfg.cutoff_ms < end_ms:
        raise TrainingError(
            f"cutoff {_iso(cfg.cutoff_ms)} is outside the data ({_iso(start_ms)} .. {_iso(end_ms)})"
        )
    first = first_window(arrays, spec)
    # With the origin on the cutoff, window -1 ends exactly at it.
    last_complete = spec.index(end_ms) - 1
    val_hi = -1 - spec.horizon
    val_lo = val_hi - cfg.val_windows + 1
    train_hi = val_lo - spec.horizon
    if train_hi < first + 1:
        raise TrainingError(
            f"too little history before the cutoff: {-first} windows of "
            f"{spec.length_ms / DAY_MS:g}d, need at least {cfg.val_windows + 2 * spec.horizon + 2}"
        )
    test_hi = max(-1, last_complete - spec.horizon)
    tensor = build_tensor(arrays, spec, max(test_hi + spec.horizon, -1))
    train = samples_at(tensor, user_ids, list(range(first, train_hi + 1)))
    val = samples_at(tensor, user_ids, list(range(val_lo, val_hi + 1)))
    covered = last_complete - spec.horizon >= -1
    test = (
        samples_at(tensor, user_ids, list(range(-1, test_hi + 1)))
        if covered
        else samples_at(tensor, user_ids, [-1], with_labels=False)
    )
    cutoff = test.select(test.window_index == -1)
    n_users = len(np.unique(train.user_ids))
    if n_users < cfg.min_users:
        raise TrainingError(f"only {n_users} users in the training split, need {cfg.min_users}")
    log.info(
        "samples: train %d (%d users), val %d, test %d over %d window ends, cutoff %d",
        len(train),
        n_users,
        len(val),
        len(test),
        test_hi + 2 if covered else 0,
        len(cutoff),
    )
    return Split(train, val, test, cutoff, (first, train_hi), (val_lo, val_hi), (-1, test_hi))


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def _targets(samples: Samples) -> dict[str, np.ndarray]:
    return {"orders": samples.orders, "spend": samples.spend, "churn": samples.churn}


def churn_thresholds(p: np.ndarray, y: np.ndarray, precision: float = 0.9) -> Thresholds:
    """``high``: the lowest cut whose precision for churners on validation reaches ``precision``.

    ``medium`` is 0.5. Fixed numbers would mean different things for every data set; this
    makes "high" mean "nine in ten of these users did not order", measured on the past.
    """
    order = np.argsort(-p)
    hits = np.cumsum(y[order])
    prec = hits / np.arange(1, len(p) + 1)
    ok = np.flatnonzero(prec >= precision)
    high = float(p[order][ok.max()]) if ok.size else 0.9
    high = min(max(high, 0.55), 0.99)
    return Thresholds(medium=min(0.5, high), high=high)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "pandas"]
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def run(events: pd.DataFrame, cfg: TrainConfig) -> dict[str, Any]:
    """The whole command; returns the report dict (also written to ``report.json``)."""
    from training import evaluate, export, report
    from training.model import ModelConfig, predict, train_model

    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    split = split_samples(events, cfg)
    norm = NormStats.fit(split.train.sequences)
    x_train, x_val = norm.apply(split.train.sequences), norm.apply(split.val.sequences)
    model_cfg = ModelConfig(cell=cfg.cell, units=cfg.units, epochs=cfg.epochs, seed=cfg.seed)  # type: ignore[arg-type]
    model, history = train_model(
        x_train, _targets(split.train), x_val, _targets(split.val), model_cfg
    )

    onnx_path = cfg.out / "model.onnx"
    export_info = export.export_onnx(model, onnx_path).to_dict()
    export.check_recurrent_op(onnx_path)
    x_test = norm.apply(split.test.sequences)
    diffs = export.verify_against_keras(onnx_path, model, x_test if len(x_test) else x_val)

    val_pred = predict(model, x_val)
    thresholds = churn_thresholds(val_pred["churn_probability"], split.val.churn)
    spec = cfg.spec
    onnx_sha = export.sha256_file(onnx_path)
    model_version = "m-" + onnx_sha[:12]

    # Scores downstream come from ONNX Runtime, the scorer the worker uses.
    from stream.model import load_model

    metrics: dict[str, Any] = {}
    predictions = None
    test_has_labels = len(split.test) and not np.isnan(split.test.orders).any()
    tmp_manifest = Manifest(model_version, spec, norm, thresholds, onnx_sha)
    (cfg.out / "manifest.json").write_text(json.dumps(tmp_manifest.to_dict(), indent=2))
    scorer = load_model(cfg.out)
    from training.offline import score_samples

    test_scores = score_samples(scorer, split.test)
    if test_has_labels:
        metrics = _evaluate(split.test, test_scores, spec.horizon, evaluate)
    predictions = score_samples(scorer, split.cutoff)

    quant: dict[str, Any] | None = None
    if cfg.quantize:
        quant = _quantize(cfg, onnx_path, split, metrics, export, evaluate, spec.horizon)

    report_data: dict[str, Any] = {
        "model_version": model_version,
        "window": {
            "length_days": spec.length_ms / DAY_MS,
            "seq_len": spec.seq_len,
            "horizon_windows": spec.horizon,
            "lookback_windows": spec.lookback,
        },
        "split": {
            "cutoff": _iso(cfg.cutoff_ms),
            "train_window_ends": [_iso(spec.end_ms(w)) for w in split.train_windows],
            "val_window_ends": [_iso(spec.end_ms(w)) for w in split.val_windows],
            "test_window_ends": [_iso(spec.end_ms(w)) for w in split.test_windows],
            "samples": {
                "train": len(split.train),
                "val": len(split.val),
                "test": len(split.test),
                "cutoff": len(split.cutoff),
            },
            "users": {"train": len(np.unique(split.train.user_ids)), "cutoff": len(split.cutoff)},
            "base_rates": {
                "train_churn": float(split.train.churn.mean()),
                "test_churn": float(np.nanmean(split.test.churn)) if test_has_labels else None,
            },
        },
        "population": "users with at least one event in the last lookback windows before the "
        "window end (the worker scores the same users at each window close)",
        "training": {
            "config": asdict(model_cfg) if hasattr(model_cfg, "__dataclass_fields__") else {},
            "history": history,
            "epochs_run": len(history.get("loss", [])),
        },
        "export": {"onnx_vs_keras_max_abs_diff": diffs, "opset": 17},
        "thresholds": asdict(thresholds),
        "metrics": metrics,
        "quantized": quant,
        "rolling_origin": rolling_origin(events, cfg) if cfg.cv_folds else None,
        "source": cfg.source,
        "seconds": round(time.perf_counter() - started, 1),
    }
    manifest = Manifest(
        model_version,
        spec,
        norm,
        thresholds,
        onnx_sha,
        extra={
            "export": export_info,
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "feature_fingerprint_code": contract_fingerprint(),
            "training_data": {**cfg.source, **report_data["split"]},
            "metrics": _headline(metrics),
            "libraries": library_versions(),
        },
    )
    (cfg.out / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    predictions.drop(columns=["window_end_ms"]).to_csv(cfg.out / "predictions.csv", index=False)
    if metrics:
        weekly = test_scores.groupby("window_end_ms").agg(
            actual=("actual_orders", "sum"), predicted=("expected_orders", "sum")
        )
        report.write_report(
            cfg.out,
            metrics,
            "model",
            history=history,
            churn_p=test_scores["churn_probability"].to_numpy(),
            churn_y=test_scores["actual_churn"].to_numpy(),
            orders_pred=test_scores["expected_orders"].to_numpy(),
            orders_actual=test_scores["actual_orders"].to_numpy(),
            weekly={
                "window_end": pd.to_datetime(weekly.index, unit="ms").to_numpy(),
                "actual": weekly["actual"].to_numpy(),
                "predicted": weekly["predicted"].to_numpy(),
            },
            export_info={"onnx_vs_keras_max_abs_diff": diffs},
            extra={k: v for k, v in report_data.items() if k != "metrics"},
        )
    else:
        (cfg.out / "report.json").write_text(json.dumps(report_data, indent=2, default=str))
    log.info("wrote %s in %.1fs", cfg.out, time.perf_counter() - started)
    return report_data


def rolling_origin(events: pd.DataFrame, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Refit and evaluate at earlier cutoffs, each ``horizon`` windows before the next.

    Every fold sees only data before the main cutoff (``end`` is the main cutoff), so the
    held-out period stays unseen; each fold's own normalisation and early stopping use only
    its own past. Reports the model and baselines on orders MAE and churn ROC-AUC per fold.
    """
    from training import evaluate
    from training.model import ModelConfig, predict, train_model

    folds: list[dict[str, Any]] = []
    step = cfg.horizon * cfg.window_ms
    for k in range(cfg.cv_folds, 0, -1):
        fold_cfg = dataclasses.replace(
            cfg, cutoff_ms=cfg.cutoff_ms - k * step, end_ms=cfg.cutoff_ms, cv_folds=0
        )
        try:
            split = split_samples(events, fold_cfg)
        except TrainingError as exc:
            folds.append({"cutoff": _iso(fold_cfg.cutoff_ms), "skipped": str(exc)})
            continue
        norm = NormStats.fit(split.train.sequences)
        model_cfg = ModelConfig(cell=cfg.cell, units=cfg.units, epochs=cfg.epochs, seed=cfg.seed)  # type: ignore[arg-type]
        model, _ = train_model(
            norm.apply(split.train.sequences),
            _targets(split.train),
            norm.apply(split.val.sequences),
            _targets(split.val),
            model_cfg,
        )
        pred = predict(model, norm.apply(split.test.sequences))
        scores = pd.DataFrame({k2: np.asarray(v, np.float64) for k2, v in pred.items()})
        metrics = _evaluate(split.test, scores, cfg.horizon, evaluate)
        folds.append(
            {
                "cutoff": _iso(fold_cfg.cutoff_ms),
                "test_samples": len(split.test),
                "orders_mae": {m: v["orders"]["mae"] for m, v in metrics.items()},
                "churn_roc_auc": {m: v["churn"]["roc_auc"] for m, v in metrics.items()},
            }
        )
        log.info("rolling origin %s: %s", folds[-1]["cutoff"], folds[-1]["orders_mae"])
    return folds


def _evaluate(test: Samples, scores: pd.DataFrame, horizon: int, evaluate: Any) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    preds = {
        "model": {
            k: scores[k].to_numpy(np.float64)
            for k in ("expected_orders", "expected_spend", "churn_probability")
        },
        **baselines(test.sequences, horizon),
    }
    for name, p in preds.items():
        rows[name] = {
            "orders": evaluate.evaluate_demand(p["expected_orders"], test.orders),
            "spend": evaluate.evaluate_demand(p["expected_spend"], test.spend),
            "churn": evaluate.evaluate_churn(p["churn_probability"], test.churn),
        }
    return rows


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    model = metrics.get("model")
    if not model:
        return {}
    return {
        "test_orders_mae": model["orders"]["mae"],
        "test_spend_mae": model["spend"]["mae"],
        "test_churn_roc_auc": model["churn"]["roc_auc"],
        "beats_all_baselines_on_orders_mae": all(
            model["orders"]["mae"] < m["orders"]["mae"] for k, m in metrics.items() if k != "model"
        ),
        "beats_all_baselines_on_churn_roc_auc": all(
            model["churn"]["roc_auc"] > m["churn"]["roc_auc"]
            for k, m in metrics.items()
            if k != "model"
        ),
    }


def _quantize(
    cfg: TrainConfig,
    onnx_path: Path,
    split: Split,
    metrics: dict[str, Any],
    export: Any,
    evaluate: Any,
    horizon: int,
) -> dict[str, Any]:
    import onnxruntime as ort

    from stream.model import Scorer

    qdir = cfg.out / "quantized"
    qdir.mkdir(exist_ok=True)
    qpath = qdir / "model.onnx"
    export.quantize_dynamic_int8(onnx_path, qpath)
    base = Manifest.from_dict(json.loads((cfg.out / "manifest.json").read_text()))
    session = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
    scorer = Scorer(base, session, qpath)
    from training.offline import score_samples

    scores = score_samples(scorer, split.test)
    out: dict[str, Any] = {
        "path": str(qpath),
        "bytes": qpath.stat().st_size,
        "fp32_bytes": onnx_path.stat().st_size,
    }
    if metrics:
        out["metrics"] = _evaluate(split.test, scores, horizon, evaluate)["model"]
    return out
