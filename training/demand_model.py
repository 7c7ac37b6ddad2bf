"""The inventory demand model: one Keras LSTM over every series, quantiles by pinball loss.

Owns :class:`DemandConfig`, :func:`samples_at` (the (series, origin) samples of a
:class:`~training.demand.SeriesPanel`, inputs from :func:`features.demand.series_inputs`),
:func:`build_demand_model`, :func:`fit_demand` (epochs chosen at a pseudo-cutoff one horizon
before the cutoff, the interval's width calibrated there, then a refit on every origin up to
the cutoff) and :func:`predict_demand`.

The model is global: one network for every series, fed scale-free inputs (each series over
its own recent mean), its quantiles multiplied back by the series' scale. It reads a
series' last ``seq_len`` windows and the horizon's calendar, and gives P10, P50 and P90 of
units and of revenue for each of the next ``horizon`` windows, monotone by construction
(cumulative softplus). The loss is the pinball loss of the three quantiles, each sample
weighted by its series' scale, so that the fit is that of the real-unit loss and the big
series (which a planner and WAPE care most about) weigh what they sell. Origins whose
horizon is only partly observed train too, on their observed windows: the latest weeks of a
short history are then not lost to the horizon.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from features.demand import (
    DEMAND_INPUTS,
    DEMAND_OUTPUT,
    DEMAND_TARGETS,
    FUTURE_FEATURES,
    I_REVENUE,
    I_UNITS,
    INPUT_FEATURES,
    future_inputs,
    series_inputs,
    series_scale,
    widened,
)
from training.demand import QUANTILES, SeriesPanel

log = logging.getLogger(__name__)

TARGETS: Final = DEMAND_TARGETS
"""What each horizon window's quantiles are of, in the output's second-to-last axis."""
COVERAGE_TARGET: Final = 0.8
"""P10-P90: the share of actuals the interval should hold."""


@dataclass(frozen=True)
class DemandConfig:
    seq_len: int = 8
    """Input windows: two months of weeks; the season comes from the calendar inputs."""
    horizon: int = 13
    units: int = 32
    dense_units: int = 32
    learning_rate: float = 3e-3
    batch_size: int = 128
    max_epochs: int = 40
    seed: int = 7
    seeds: int = 3
    """Members of the ensemble (seeds ``seed .. seed + seeds - 1``), whose quantiles are
    averaged: one small network's fit on a few thousand samples varies from seed to seed."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemandSamples:
    """(series, origin) samples: ``origin`` is the column of the last input window."""

    series: np.ndarray
    origin: np.ndarray
    inputs: np.ndarray
    """``[N, seq_len, len(INPUT_FEATURES)]`` float32."""
    future: np.ndarray
    """``[N, horizon, len(FUTURE_FEATURES)]`` float32."""
    scale: np.ndarray
    """``[N, 2]`` mean units and revenue over the input windows."""
    target: np.ndarray
    """``[N, horizon, 2]`` units and revenue of the horizon windows (NaN: not observed)."""

    def __len__(self) -> int:
        return int(self.series.shape[0])

    def select(self, keep: np.ndarray) -> DemandSamples:
        return DemandSamples(
            self.series[keep],
            self.origin[keep],
            self.inputs[keep],
            self.future[keep],
            self.scale[keep],
            self.target[keep],
        )


def samples_at(
    panel: SeriesPanel,
    origins: list[int],
    seq_len: int,
    horizon: int,
    observed_through: int,
    series: np.ndarray | None = None,
) -> DemandSamples:
    """Samples of ``series`` (default: every series) at origin columns ``origins``; horizon
    windows after column ``observed_through`` are NaN targets."""
    spec = panel.spec
    picked = np.arange(len(panel.names)) if series is None else np.asarray(series)
    parts: list[DemandSamples] = []
    n_cols = panel.n_windows
    for origin in origins:
        lo = origin - seq_len + 1
        if lo < 0:
            raise ValueError(f"origin {origin} has fewer than {seq_len} windows before it")
        cells = panel.cells[picked, lo : origin + 1]
        starts = spec.origin_ms + (panel.first + np.arange(lo, origin + 1)) * spec.length_ms
        future_starts = (
            spec.origin_ms
            + (panel.first + np.arange(origin + 1, origin + 1 + horizon)) * spec.length_ms
        )
        target = np.full((len(picked), horizon, 2), np.nan)
        for h in range(horizon):
            col = origin + 1 + h
            if col <= observed_through and col < n_cols:
                target[:, h] = panel.cells[picked, col][:, [I_UNITS, I_REVENUE]]
        parts.append(
            DemandSamples(
                picked.copy(),
                np.full(len(picked), origin),
                series_inputs(cells, panel.totals[lo : origin + 1], starts),
                np.repeat(future_inputs(future_starts)[None], len(picked), axis=0),
                series_scale(cells),
                target,
            )
        )
    if not parts:
        raise ValueError("no origins")
    return DemandSamples(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in DemandSamples.__dataclass_fields__
        )
    )


def build_demand_model(cfg: DemandConfig) -> Any:
    """``(sequence, future) -> [N, horizon, 2, 3]`` scale-free quantiles."""
    import keras

    sequence = keras.Input((cfg.seq_len, len(INPUT_FEATURES)), name="sequence")
    future = keras.Input((cfg.horizon, len(FUTURE_FEATURES)), name="future")
    state = keras.layers.LSTM(cfg.units, name="demand_lstm")(sequence)
    repeated = keras.layers.RepeatVector(cfg.horizon)(state)
    joined = keras.layers.Concatenate()([repeated, future])
    hidden = keras.layers.Dense(cfg.dense_units, activation="relu")(joined)
    raw = keras.layers.Dense(len(TARGETS) * len(QUANTILES))(hidden)
    raw = keras.layers.Reshape((cfg.horizon, len(TARGETS), len(QUANTILES)))(raw)
    quantiles = _Monotone(name="quantiles")(raw)
    return keras.Model({"sequence": sequence, "future": future}, quantiles)


def _monotone_layer() -> Any:
    import keras

    class Monotone(keras.layers.Layer):  # type: ignore[misc]
        """P10 >= 0, P50 >= P10, P90 >= P50: a cumulative sum of softplus steps."""

        def call(self, x: Any) -> Any:
            return keras.ops.cumsum(keras.ops.softplus(x), axis=-1)

    return Monotone


def _Monotone(name: str) -> Any:
    return _monotone_layer()(name=name)


def _pinball(y_true: Any, y_pred: Any) -> Any:
    """Weighted pinball loss: ``y_true`` ``[N, H, 2, 2]`` holds the scaled target and its
    weight (0 where not observed); ``y_pred`` ``[N, H, 2, 3]`` the quantiles."""
    import keras

    target = y_true[..., 0:1]
    weight = y_true[..., 1]
    levels = keras.ops.convert_to_tensor(np.asarray(QUANTILES, dtype=np.float32))
    gap = target - y_pred
    loss = keras.ops.maximum(levels * gap, (levels - 1.0) * gap)
    return keras.ops.sum(keras.ops.mean(loss, axis=-1) * weight) / (keras.ops.sum(weight) + 1e-9)


def _training_arrays(samples: DemandSamples) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Model inputs, and ``[N, H, 2, 2]`` scaled targets with their weights."""
    scale = samples.scale[:, None, :]
    observed = ~np.isnan(samples.target)
    scaled = np.divide(
        np.nan_to_num(samples.target), scale, out=np.zeros_like(samples.target), where=scale > 0
    )
    # Each target's weight: its series' scale over the samples' mean scale of that target.
    mean_scale = samples.scale.mean(axis=0)
    relative = np.divide(
        samples.scale, mean_scale, out=np.zeros_like(samples.scale), where=mean_scale > 0
    )
    weight = np.where(observed & (scale > 0), relative[:, None, :], 0.0)
    y = np.stack([scaled, weight], axis=-1).astype(np.float32)
    return {"sequence": samples.inputs, "future": samples.future}, y


@dataclass
class DemandFit:
    models: list[Any]
    """The ensemble fitted on every origin before the cutoff."""
    selection: list[Any]
    """The ensemble of origins before the pseudo-cutoff, at the chosen epoch: what the
    pseudo-cutoff's scores are of."""
    epochs: int
    width: float
    """The interval's calibration (:func:`features.demand.widened`), chosen at the
    pseudo-cutoff."""
    info: dict[str, Any]


def _train(
    samples: DemandSamples, cfg: DemandConfig, seed: int, epochs: int, check: Any = None
) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = build_demand_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=_pinball)
    x, y = _training_arrays(samples)
    callbacks = [check] if check is not None else []
    model.fit(
        x, y, batch_size=cfg.batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=callbacks
    )
    return model


def _scaled(models: list[Any], samples: DemandSamples) -> np.ndarray:
    """The ensemble's mean scale-free quantiles ``[N, horizon, 2, 3]``."""
    x = {"sequence": samples.inputs, "future": samples.future}
    each = [np.asarray(m.predict(x, verbose=0, batch_size=4096), np.float64) for m in models]
    return np.asarray(np.mean(each, axis=0), dtype=np.float64)


def predict_demand(models: list[Any], samples: DemandSamples, width: float = 1.0) -> np.ndarray:
    """``[N, horizon, 2, 3]`` quantiles in the data's units: the ensemble's mean, times each
    series' scale, the interval widened by ``width``."""
    return widened(_scaled(models, samples) * samples.scale[:, None, :, None], width)


def calibrate_width(quantiles: np.ndarray, actual: np.ndarray) -> float:
    """The factor on the interval's half-widths whose P10-P90 coverage of ``actual`` comes
    closest to :data:`COVERAGE_TARGET` (a grid from 0.5 to 4; the one nearest 1 on a tie)."""
    grid = np.round(np.arange(0.5, 4.0001, 0.05), 2)
    seen = ~np.isnan(actual)
    if not seen.any():
        return 1.0
    best, best_gap = 1.0, np.inf
    for factor in sorted(grid, key=lambda f: abs(f - 1.0)):
        q = widened(quantiles, float(factor))
        a = actual[seen]
        inside = (a >= q[..., 0][seen]) & (a <= q[..., 2][seen])
        gap = abs(float(inside.mean()) - COVERAGE_TARGET)
        if gap < best_gap - 1e-12:
            best, best_gap = float(factor), gap
    return best


def _concat(parts: list[DemandSamples]) -> DemandSamples:
    return DemandSamples(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in DemandSamples.__dataclass_fields__
        )
    )


def fit_demand(
    panels: list[tuple[SeriesPanel, np.ndarray]], cutoff_col: int, cfg: DemandConfig
) -> DemandFit:
    """Choose epochs and the interval's width at the pseudo-cutoff (one horizon before the
    cutoff: the ensemble of origins before it, scored on the horizon after it, on each
    panel's series to calibrate on), then refit the ensemble on every origin before the
    cutoff for that many epochs.

    ``panels``: (panel, series to calibrate on) pairs on one window grid: the model is fitted
    on all of them. ``cutoff_col`` is the column of the last window before the cutoff.
    """
    import keras

    pseudo = cutoff_col - cfg.horizon
    first_origin = cfg.seq_len - 1
    if pseudo - 1 < first_origin:
        raise ValueError(
            f"{cutoff_col + 1} windows before the cutoff: the demand model needs at least "
            f"{cfg.seq_len + cfg.horizon + 1} ({cfg.seq_len} inputs, a horizon, an origin)"
        )

    def trained_on(through: int) -> DemandSamples:
        origins = list(range(first_origin, through))
        got = _concat(
            [samples_at(p, origins, cfg.seq_len, cfg.horizon, through) for p, _ in panels]
        )
        return got.select(got.scale[:, 0] > 0)

    train = trained_on(pseudo)
    check = _concat(
        [samples_at(p, [pseudo], cfg.seq_len, cfg.horizon, cutoff_col, s) for p, s in panels]
    )
    if not len(train) or not len(check):
        raise ValueError("the demand model has no series that sold before the pseudo-cutoff")
    x_check, y_check = _training_arrays(check)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    # Per member, its check predictions and weights after every epoch: the ensemble's loss
    # curve is that of the members' mean, and its chosen epoch is one for all members.
    curves: list[list[np.ndarray]] = []
    weights: list[list[Any]] = []

    class Check(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            curves[-1].append(np.asarray(self.model.predict(x_check, verbose=0), np.float64))
            weights[-1].append(self.model.get_weights())

    members = []
    for seed in seeds:
        curves.append([])
        weights.append([])
        members.append(_train(train, cfg, seed, cfg.max_epochs, Check()))
    mean_curve = [np.mean([c[e] for c in curves], axis=0) for e in range(cfg.max_epochs)]
    losses = [float(_pinball(y_check, m.astype(np.float32))) for m in mean_curve]
    epochs = int(np.argmin(losses)) + 1
    for member, kept in zip(members, weights, strict=True):
        member.set_weights(kept[epochs - 1])
    at_pseudo = mean_curve[epochs - 1] * check.scale[:, None, :, None]
    width = calibrate_width(at_pseudo[:, :, 0, :], check.target[:, :, 0])
    log.info(
        "demand model: %d epochs (pseudo-cutoff loss %.4f), interval width x%.2f",
        epochs,
        losses[epochs - 1],
        width,
    )
    every = trained_on(cutoff_col)
    models = [_train(every, cfg, seed, epochs) for seed in seeds]
    info = {
        "epochs": epochs,
        "pseudo_cutoff_losses": [round(v, 5) for v in losses],
        "interval_width": width,
        "samples": {"selection": len(train), "final": len(every)},
        "config": cfg.to_dict(),
    }
    return DemandFit(models, members, epochs, width, info)


def export_demand(models: list[Any], cfg: DemandConfig, path: Path) -> str:
    """The ensemble as one ONNX graph at ``path`` (inputs :data:`features.demand.DEMAND_INPUTS`,
    output ``quantiles`` in the data's units, before :func:`~features.demand.widened`);
    returns its sha256."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    from serving.scorer import sha256_file

    sequence, future, scale = DEMAND_INPUTS
    signature = (
        tf.TensorSpec([None, cfg.seq_len, len(INPUT_FEATURES)], tf.float32, name=sequence),
        tf.TensorSpec([None, cfg.horizon, len(FUTURE_FEATURES)], tf.float32, name=future),
        tf.TensorSpec([None, len(TARGETS)], tf.float32, name=scale),
    )

    @tf.function(input_signature=signature, autograph=False)  # type: ignore[untyped-decorator]
    def serve(seq: Any, fut: Any, sc: Any) -> dict[str, Any]:
        each = [m({"sequence": seq, "future": fut}, training=False) for m in models]
        mean = tf.add_n(each) / float(len(each))
        return {DEMAND_OUTPUT: tf.identity(mean * sc[:, None, :, None])}

    proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    onnx.checker.check_model(proto, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return sha256_file(path)


def run_demand_onnx(path: Path, samples: DemandSamples) -> np.ndarray:
    """ONNX Runtime's quantiles for ``samples`` (before widening): what a server computes."""
    import onnxruntime as ort

    sequence, future, scale = DEMAND_INPUTS
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {
        sequence: samples.inputs.astype(np.float32),
        future: samples.future.astype(np.float32),
        scale: samples.scale.astype(np.float32),
    }
    (got,) = session.run([DEMAND_OUTPUT], feeds)
    return np.asarray(got, dtype=np.float64)
