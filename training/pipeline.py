"""train-and-export, step by step: events → origins → model → evaluation → ONNX + manifest.

Owns the time protocol, the evaluation against baselines on the held-out period, and the
files written into the output directory. Each step is a function so tests can run the
pipeline on a tiny generated history.

Protocol, for a cutoff ``C`` and a horizon of ``H`` windows (window boundaries laid on ``C``;
window ``-1`` ends exactly at ``C``):

* **origins**: every window end before ``C`` is a training origin; its ``H`` per-window targets
  are masked where they fall after ``C``, so the latest weeks before the cutoff still teach
  the model (see :mod:`training.origins`). Each origin's BG/NBD prior is fitted on data
  before that origin only.
* **selection**: the same training one horizon earlier (pseudo-cutoff ``C - H``, targets
  masked beyond it) chooses the epoch count on the pseudo-cutoff's own, fully observed
  horizon -- the real task one horizon earlier. Nothing after ``C`` is ever seen.
* **refit**: every origin up to ``C`` with that epoch count.
* **test**: the origin at ``C`` (the headline, and ``predictions.csv``) and any later window
  ends whose horizon the data covers, each scored with the deployed model and its prior.
* **population**: every customer with an order before the origin, however long dormant, and
  every user active in the lookback (:func:`features.windows.population_mask`).
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.batch import WindowTensor, sequences_at
from features.forecast import total_level
from features.manifest import INPUT_NAME, OUTPUT_NAMES, SUMMARY_INPUT_NAME, Manifest
from features.season import SeasonIndex, horizon_multiplier
from features.signals import RiskThresholds
from features.summary import I_LOG_EXPECTED, I_LOG_VALUE, PriorSpec
from features.windows import (
    DAY_MS,
    Float32Array,
    NormStats,
    WindowSpec,
    contract_fingerprint,
    lifetime_summary,
)
from serving.scorer import Scorer, Scores, orders_shape, served, sha256_file
from training.baselines import baselines
from training.calibration import fit_churn_calibration
from training.dataset import build_tensor, first_window, fit_input_reference, to_event_arrays
from training.origins import (
    MASKED,
    OriginSet,
    PriorFit,
    PriorUnavailable,
    origin_set,
    plan_samples,
    population_rows,
    prior_at,
)
from training.outofcore import EventStore
from training.prior_choice import Comparison, PriorChoice, choose_prior, compare_priors
from training.resources import StageLog, progress
from training.shards import (
    BLOCK_USERS,
    MAX_FIT_USERS,
    InMemoryTensors,
    TensorSource,
    fit_sample,
    rows_of,
    user_blocks,
)

log = logging.getLogger(__name__)


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
    """Unused by the residual model (selection is on the pseudo-cutoff); kept for the CLI."""
    epochs: int = 12
    """Most epochs the selection may run; the refit runs the count it chose."""
    seed: int = 7
    seeds: int = 3
    """Models trained with seeds ``seed .. seed + seeds - 1`` and averaged into one graph (three
    32-unit LSTMs cost about what the former single 64-unit one did at inference)."""
    cell: str = "lstm"
    units: int = 32
    quantize: bool = False
    cv_folds: int = 0
    """Rolling-origin folds before the cutoff (0: none)."""
    selection_cutoffs: int = 4
    """Pseudo-cutoffs, one horizon apart back from the cutoff, whose pooled loss chooses the
    epoch count (fewer where the history is too short): with a 13-week horizon, a year of
    seasons rather than the one quarter before the cutoff."""
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


def _iso(ms: int) -> str:
    return str(pd.Timestamp(ms, unit="ms", tz="UTC").isoformat())


def churn_thresholds(p: np.ndarray, y: np.ndarray, precision: float = 0.9) -> RiskThresholds:
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
    return RiskThresholds(medium=min(0.5, high), high=high)


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


MAX_SAMPLES = 200_000
"""Cap on (customer, origin) training rows per fit, by :data:`training.origins.SAMPLE_RULE`
(the same share of every origin and activity stratum): epoch time and memory stay bounded
whatever the shop's size. Online Retail has ~85k rows, under it; the report's
``training.samples`` says what a run used."""


MIN_HISTORY_WINDOWS = 2
"""Windows of history before the cutoff below which nothing is trained. From this many up to a
horizon plus two there is no pseudo-cutoff to check a correction on, and the model is the
customer-base prior alone (0 epochs): a shop a few weeks old still gets BG/NBD's forecast,
served like every model's, instead of a refusal."""


MIN_PRIOR_CUSTOMERS = 10
"""Below this many customers with an order, an origin gets no BG/NBD fit and no rows."""


def fit_prior(
    horizon_weeks: float, season: SeasonIndex | None = None, *, pareto: bool = False
) -> PriorFit:
    """The prior fitter: BG/NBD by maximum likelihood plus the population's spend per day,
    with the shop's calendar as known at the cutoff (``season``, None for a year-round rate);
    with ``pareto``, Pareto/NBD too, which the summary then reads
    (:mod:`training.prior_choice` says when)."""
    from training.clv import fit_bgnbd, fit_pareto_nbd

    def fit(
        x: np.ndarray, t_x: np.ndarray, age: np.ndarray, spend: np.ndarray, days: np.ndarray
    ) -> PriorSpec:
        if len(x) < MIN_PRIOR_CUSTOMERS:
            raise PriorUnavailable(
                f"{len(x)} customers with an order, BG/NBD needs {MIN_PRIOR_CUSTOMERS}"
            )
        params = fit_bgnbd(x, t_x, age)
        try:
            other = fit_pareto_nbd(x, t_x, age) if pareto else None
        except ValueError as exc:  # e.g. a parameter at infinity on a degenerate origin
            raise PriorUnavailable(f"Pareto/NBD does not fit: {exc}") from None
        total_days = float(days.sum())
        value = float(spend.sum()) / total_days if total_days > 0 else 0.0
        # Data without prices has no spend: a unit scale keeps the spend head defined.
        return PriorSpec(params, horizon_weeks, value if value > 0 else 1.0, season, other)

    return fit


@dataclass
class Fit:
    """What one cutoff's training produced."""

    cut: int
    norm: NormStats
    prior: PriorSpec
    models: list[Any]
    info: dict[str, Any]
    select_val: OriginSet
    n_train: int


def _residual_data(rows: OriginSet, norm: NormStats) -> Any:
    from training.model import ResidualData

    scale = rows.value_scale[:, None].astype(np.float32)
    spend = np.where(rows.spend >= 0, rows.spend / scale, MASKED).astype(np.float32)
    return ResidualData(
        norm.apply(rows.sequences),
        rows.summary,
        rows.orders.astype(np.float32),
        spend,
        rows.churn.astype(np.float32).reshape(-1, 1),
    )


def fit_at(
    tensor: WindowTensor, user_ids: np.ndarray, first: int, cut: int, cfg: TrainConfig
) -> Fit:
    """Select the epoch count one horizon before origin ``cut``, refit on origins before it.

    ``cut`` is the window index of the cutoff origin (-1 for the main cutoff); nothing after
    its end is read.
    """
    from training.model import ResidualConfig, train_residual
    from training.season import year_observed

    spec = tensor.spec
    horizon = spec.horizon
    horizon_weeks = horizon * spec.length_ms / (7 * DAY_MS)
    pseudo = cut - horizon
    if cut + 1 - first < MIN_HISTORY_WINDOWS:
        raise TrainingError(
            f"too little history before the cutoff: {cut + 1 - first} window(s) of "
            f"{spec.length_ms / DAY_MS:g}d, need {MIN_HISTORY_WINDOWS}"
        )
    # The first pseudo-cutoff needs one origin before it; without one the model is the prior.
    selectable = pseudo - 1 >= first
    if not selectable:
        log.info(
            "%d windows of history, a pseudo-cutoff needs %d (a horizon and two): no correction "
            "is checked or learnt, the model is the customer-base prior",
            cut + 1 - first,
            horizon + 2,
        )
    n_cut = len(population_rows(tensor, cut))
    if n_cut < cfg.min_users:
        raise TrainingError(f"only {n_cut} users at the cutoff, need {cfg.min_users}")
    calendar: dict[str, str] = {}
    try:
        fit, prior = _calendar_fit(tensor, first, cut, horizon_weeks, calendar)
    except PriorUnavailable as exc:
        raise TrainingError(f"too few customers with an order before the cutoff: {exc}") from None
    pseudo_season: SeasonIndex | None = None
    select_val: OriginSet | None = None
    fit_pseudo = fit
    if selectable:
        try:
            fit_pseudo, pseudo_prior = _calendar_fit(tensor, first, pseudo, horizon_weeks, calendar)
            pseudo_season = pseudo_prior.season
        except PriorUnavailable:
            fit_pseudo = fit_prior(horizon_weeks)  # origin_set skips origins without a prior
        select_val = origin_set(tensor, user_ids, [pseudo], cut, fit_pseudo)
    choice = _choose_prior(tensor, user_ids, first, cut, horizon_weeks, cfg, select_val)
    log.info("prior: %s (%s)", choice.model, choice.why)
    if choice.pareto:
        # The calendars found above stand (they are estimated against BG/NBD either way).
        fit = fit_prior(horizon_weeks, prior.season, pareto=True)
        fit_pseudo = fit_prior(horizon_weeks, pseudo_season, pareto=True)
        try:
            prior = prior_at(sequences_at(tensor, cut, population_rows(tensor, cut))[:, -1, :], fit)
        except PriorUnavailable as exc:
            raise TrainingError(f"Pareto/NBD was chosen and does not fit: {exc}") from None
        select_val = origin_set(tensor, user_ids, [pseudo], cut, fit_pseudo)
    plan = plan_samples(tensor, list(range(first, cut)), MAX_SAMPLES)
    full = origin_set(tensor, user_ids, list(range(first, cut)), cut, fit, plan=plan)
    if select_val is None:  # no pseudo-cutoff: its rows are none (the report says so)
        select_val = full.select(np.zeros(len(full), dtype=bool))
    n_users = len(np.unique(full.user_ids))
    norm = NormStats.fit(full.sequences)
    log.info(
        "origins %s..%s: %d rows (%d customers); pseudo-cutoff %d rows",
        _iso(spec.end_ms(first)),
        _iso(spec.end_ms(cut - 1)),
        len(full),
        n_users,
        len(select_val),
    )
    seen_year, seen_why = year_observed(
        cut - max(first, tensor.first_index), spec.length_ms / DAY_MS, horizon
    )
    log.info("calendar inputs %s: %s", "read" if seen_year else "blanked", seen_why)
    res_cfg = ResidualConfig(
        units=cfg.units,
        max_epochs=cfg.epochs,
        seeds=tuple(cfg.seed + i for i in range(cfg.seeds)),
        calendar_inputs=seen_year,
    )
    used: list[str] = []

    def selections() -> Iterator[tuple[Any, Any]]:
        """Pseudo-cutoffs one, two, ... horizons back, built one at a time (memory holds one
        selection set besides ``full``); one whose origins or prior cannot be had ends them."""
        for k in range(1, cfg.selection_cutoffs + 1):
            at = cut - k * horizon
            if at - 1 < first or (k > 1 and at - first < horizon):
                # The first pseudo-cutoff needs one origin before it (else: too little history,
                # refused above); further ones a horizon of origins, or they add only noise.
                break
            try:
                fit_k = (
                    fit_pseudo
                    if k == 1
                    else _calendar_fit(
                        tensor, first, at, horizon_weeks, calendar, pareto=choice.pareto
                    )[0]
                )
                val = (
                    select_val
                    if k == 1
                    else origin_set(tensor, user_ids, [at], at + horizon, fit_k)
                )
                train = origin_set(
                    tensor, user_ids, list(range(first, at)), at, fit_k, max_samples=MAX_SAMPLES
                )
            except PriorUnavailable as exc:
                log.info("pseudo-cutoff %s skipped: %s", _iso(spec.end_ms(at)), exc)
                break
            if len(val) < cfg.min_users or len(train) == 0:
                break
            used.append(_iso(spec.end_ms(at)))
            yield _residual_data(train, norm), _residual_data(val, norm)

    models, info = train_residual(selections(), _residual_data(full, norm), res_cfg)
    info["config"] = res_cfg.to_dict()
    info["pseudo_cutoffs"] = used
    info["calendar"] = calendar
    info["calendar_inputs"] = {"read": seen_year, "why": seen_why}
    info["prior"] = choice.to_dict()
    info["samples"] = {**plan.to_dict(), "kept": len(full)}
    return Fit(cut, norm, prior, models, info, select_val, len(full))


def _earlier_scores(
    tensor: WindowTensor,
    user_ids: np.ndarray,
    first: int,
    fit: PriorFit,
    prior: PriorSpec,
    raw: Scorer,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The model's churn and mean orders, and who did not order, at the origin one horizon
    before the pseudo-cutoff (its horizon ends where the pseudo-cutoff's begins): the churn
    calibration's out-of-time check. None when the history before it is shorter than a
    horizon, as for a second pseudo-cutoff (:func:`fit_at`)."""
    horizon = tensor.spec.horizon
    pseudo = -1 - horizon
    earlier = pseudo - horizon
    if earlier - first < horizon:
        return None
    rows = origin_set(tensor, user_ids, [earlier], pseudo, fit, prior=prior)
    rows = rows.select(rows.complete)
    if len(rows) == 0:
        return None
    scores = raw.score(rows.sequences)
    return scores.churn_probability, scores.means(), rows.churn


def _calendar_fit(
    tensor: WindowTensor,
    first: int,
    cut: int,
    horizon_weeks: float,
    found: dict[str, str],
    *,
    pareto: bool = False,
) -> tuple[PriorFit, PriorSpec]:
    """The prior fitter with the shop's calendar as known at window ``cut``'s end, and the
    prior it fits there (raises :class:`PriorUnavailable` when too few customers ordered);
    what the calendar estimate found is added to ``found`` under the cutoff's date. The
    calendar is always estimated against BG/NBD; ``pareto`` adds Pareto/NBD to the prior."""
    from training.season import season_at

    last = sequences_at(tensor, cut, population_rows(tensor, cut))[:, -1, :]
    prior = prior_at(last, fit_prior(horizon_weeks))
    season, why = season_at(tensor, first, cut, prior.bgnbd)
    found[_iso(tensor.spec.end_ms(cut))[:10]] = why
    fitter = fit_prior(horizon_weeks, season, pareto=pareto)
    return fitter, (prior_at(last, fitter) if pareto else replace(prior, season=season))


def _choose_prior(
    tensor: WindowTensor,
    user_ids: np.ndarray,
    first: int,
    cut: int,
    horizon_weeks: float,
    cfg: TrainConfig,
    select_val: OriginSet | None,
) -> PriorChoice:
    """BG/NBD or Pareto/NBD for the shop (:mod:`training.prior_choice`), compared at the
    pseudo-cutoffs the epoch count is chosen on (``select_val`` is the first's rows)."""
    horizon = tensor.spec.horizon
    compared: list[Comparison] = []
    for k in range(1, cfg.selection_cutoffs + 1):
        at = cut - k * horizon
        if at - 1 < first or (k > 1 and at - first < horizon):
            break  # the same pseudo-cutoffs as fit_at's selections
        try:
            rows = (
                select_val
                if k == 1 and select_val is not None
                else origin_set(tensor, user_ids, [at], at + horizon, fit_prior(horizon_weeks))
            )
        except PriorUnavailable:
            break
        got = compare_priors(
            _iso(tensor.spec.end_ms(at))[:10],
            rows.sequences[:, -1, :],
            rows.orders_total,
            horizon_weeks,
        )
        if got is None:
            break
        compared.append(got)
    return choose_prior(compared)


def baseline_predictions(rows: OriginSet, prior: PriorSpec, pareto: Any) -> dict[str, Any]:
    """BG/NBD (fitted with the model's prior, whichever model that is), Pareto/NBD and the
    simple baselines, on ``rows``."""
    from features.clv import bgnbd_expected, bgnbd_p_zero

    last = rows.sequences[:, -1, :].astype(np.float64)
    x, t_x, age = _customer_base(last)
    t = prior.horizon_weeks
    log_value = rows.summary[:, I_LOG_VALUE]
    value = np.exp(log_value.astype(np.float64)) * prior.value_per_order_day
    out = baselines(rows.sequences, rows.orders.shape[1])
    e_bg = bgnbd_expected(prior.bgnbd, x, t_x, age, t)
    out["bgnbd"] = {
        "expected_orders": e_bg,
        "expected_spend": e_bg * value,
        "churn_probability": bgnbd_p_zero(prior.bgnbd, x, t_x, age, t),
    }
    return {**out, **pareto_predictions(rows.sequences[:, -1, :], log_value, prior, pareto)}


ZINB_TEXT = "negative binomial of shape r + x (the prior's r, the customer's repeat order days)"


def _customer_base(last: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD's and Pareto/NBD's ``(x, t_x, T)`` from raw last vectors; customers who never
    ordered enter as just acquired (x = t_x = T = 0)."""
    x, t_x, age, ordered = lifetime_summary(last.astype(np.float64))
    return (np.where(ordered, v, 0.0) for v in (x, t_x, age))  # type: ignore[return-value]


def pareto_predictions(
    last: np.ndarray, log_value: np.ndarray, prior: PriorSpec, pareto: Any
) -> dict[str, Any]:
    """Pareto/NBD's predictions from the rows' raw last vectors and summary value (none when
    ``pareto`` is None)."""
    if pareto is None:
        return {}
    from training.clv import pareto_nbd_expected, pareto_nbd_p_zero

    x, t_x, age = _customer_base(last)
    t = prior.horizon_weeks
    value = np.exp(log_value.astype(np.float64)) * prior.value_per_order_day
    e_p = pareto_nbd_expected(pareto, x, t_x, age, t)
    return {
        "pareto_nbd": {
            "expected_orders": e_p,
            "expected_spend": e_p * value,
            "churn_probability": pareto_nbd_p_zero(pareto, x, t_x, age, t),
        }
    }


class Outcomes(Protocol):
    """What the held-out horizon showed, per row (:class:`OriginSet` or :class:`ScoredRows`)."""

    @property
    def complete(self) -> np.ndarray: ...
    @property
    def orders_total(self) -> np.ndarray: ...
    @property
    def spend_total(self) -> np.ndarray: ...
    @property
    def window_end_ms(self) -> np.ndarray: ...


VERIFY_ROWS = 4096
"""Customers at the cutoff on whom the ONNX export is compared with Keras."""


@dataclass
class ScoredRows:
    """The test origins' rows of every user, without their sequences: what evaluation and
    ``predictions.csv`` read, gathered a block of users at a time (:func:`_score_test`)."""

    user_ids: np.ndarray
    window_index: np.ndarray
    window_end_ms: np.ndarray
    orders_total: np.ndarray
    """Order days over the horizon, NaN where not fully observed."""
    spend_total: np.ndarray
    complete: np.ndarray
    last: Float32Array
    """``[N, F]`` the raw last window vector (the lifetime summary is in it)."""
    log_value: Float32Array
    """The summary's log spend per order day (:data:`features.summary.I_LOG_VALUE`)."""
    prior_expected: np.ndarray
    """The prior's expected order days over the horizon, as the summary reads it (the chosen
    customer-base model with the calendar; :data:`features.summary.I_LOG_EXPECTED`)."""
    raw_mean: Float32Array
    raw_spend: Float32Array
    raw_churn: Float32Array
    """The graph's outputs before the served recalibration and order forecast."""
    baselines: dict[str, dict[str, np.ndarray]]
    """Every baseline but Pareto/NBD, which is fitted on all blocks' customers afterwards."""

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def select(self, mask: np.ndarray) -> ScoredRows:
        arrays = {
            f: getattr(self, f)[mask] for f in ScoredRows.__dataclass_fields__ if f != "baselines"
        }
        picked = {m: {k: v[mask] for k, v in p.items()} for m, p in self.baselines.items()}
        return ScoredRows(**arrays, baselines=picked)

    @staticmethod
    def concat(parts: list[ScoredRows]) -> ScoredRows:
        fields = [f for f in ScoredRows.__dataclass_fields__ if f != "baselines"]
        arrays = {f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}
        picked = {
            m: {k: np.concatenate([p.baselines[m][k] for p in parts]) for k in scores}
            for m, scores in parts[0].baselines.items()
        }
        return ScoredRows(**arrays, baselines=picked)

    def frame(self, scores: Scores) -> pd.DataFrame:
        """The predictions frame of these rows with the served ``scores``."""
        from training.offline import rows_frame

        columns = {
            "expected_orders": scores.expected_orders,
            "expected_spend": scores.expected_spend,
            "churn_probability": scores.churn_probability,
            "mean_orders": scores.means(),
        }
        return rows_frame(
            self.user_ids, self.window_end_ms, columns, self.orders_total, self.spend_total
        )


def _score_test(
    source: TensorSource,
    fitted: tuple[np.ndarray | None, WindowTensor | None, np.ndarray],
    raw: Scorer,
    windows: list[int],
    observed_through: int,
    fit: PriorFit,
    prior: PriorSpec,
    batch_size: int = 8192,
) -> ScoredRows:
    """Every user's rows at the test origins ``windows``, scored by the raw graph ``raw``,
    one block of :data:`training.shards.BLOCK_USERS` users at a time (the fitted tensor is
    reused when it already holds everyone)."""
    fit_codes, fit_tensor, fit_ids = fitted
    parts: list[ScoredRows] = []
    for codes in user_blocks(source.n_users, BLOCK_USERS):
        if codes is None and fit_codes is None and fit_tensor is not None:
            tensor, ids = fit_tensor, fit_ids
        else:
            tensor, ids = source.tensor(codes)
        if not any(len(population_rows(tensor, w)) for w in windows):
            continue  # e.g. a block of users who arrived after the cutoff
        rows = origin_set(tensor, ids, windows, observed_through, fit, prior=prior)
        del tensor
        outputs: list[list[np.ndarray]] = [[], [], []]
        for lo in progress(range(0, len(rows), batch_size), desc="score", unit="batch"):
            got = raw.score(rows.sequences[lo : lo + batch_size])
            row = (got.means(), got.expected_spend, got.churn_probability)
            for out, part in zip(outputs, row, strict=True):
                out.append(part)
        mean, spend, churn = (np.concatenate(o) for o in outputs)
        parts.append(
            ScoredRows(
                rows.user_ids,
                rows.window_index,
                rows.window_end_ms,
                rows.orders_total,
                rows.spend_total,
                rows.complete,
                rows.sequences[:, -1, :].copy(),
                rows.summary[:, I_LOG_VALUE].copy(),
                np.exp(rows.summary[:, I_LOG_EXPECTED].astype(np.float64)),
                mean,
                spend,
                churn,
                baseline_predictions(rows, prior, None),
            )
        )
        del rows
    if not parts:
        raise TrainingError("no user in the population at the cutoff")
    return parts[0] if len(parts) == 1 else ScoredRows.concat(parts)


def evaluate_rows(rows: Outcomes, preds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Every predictor's metrics on the fully observed rows of ``rows``."""
    from training import evaluate

    done = rows.complete
    y_orders, y_spend = rows.orders_total[done], rows.spend_total[done]
    y_churn = (y_orders == 0).astype(np.float64)
    metrics: dict[str, Any] = {}
    for name, p in preds.items():
        orders = np.asarray(p["expected_orders"], np.float64)[done]
        churn = np.asarray(p["churn_probability"], np.float64)[done]
        metrics[name] = {
            "orders": evaluate.evaluate_demand(orders, y_orders),
            "spend": evaluate.evaluate_demand(
                np.asarray(p["expected_spend"], np.float64)[done], y_spend
            ),
            "churn": evaluate.evaluate_churn(churn, y_churn),
        }
    return metrics


def lift_rows(rows: Outcomes, preds: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per-decile lift of every predictor: order days by expected orders, churners by churn
    probability."""
    from training import evaluate

    done = rows.complete
    y_orders = rows.orders_total[done]
    y_churn = (y_orders == 0).astype(np.float64)
    return {
        name: {
            "orders": evaluate.lift_by_decile(np.asarray(p["expected_orders"])[done], y_orders),
            "churn": evaluate.lift_by_decile(np.asarray(p["churn_probability"])[done], y_churn),
        }
        for name, p in preds.items()
    }


def run(
    events: pd.DataFrame | EventStore, cfg: TrainConfig, stages: StageLog | None = None
) -> dict[str, Any]:
    """The whole command; returns the report dict (also written to ``report.json``).

    ``events``: the canonical frame (pandas engine) or an :class:`EventStore` (DuckDB engine,
    events never in memory); both give the same tensor and user order. ``stages``: the run's
    stage log (the CLI's, with its reading stage in it), whose wall time and peak RSS per stage
    the report gets under ``resources``.
    """
    from training import export, report
    from training.clv import fit_pareto_nbd

    if stages is None:
        # Nobody else will close it: its sampler thread ends with this run.
        with StageLog() as own:
            return run(events, cfg, own)
    stages.start("features")
    started = time.perf_counter()
    cfg.out.mkdir(parents=True, exist_ok=True)
    spec = cfg.spec
    arrays = None
    if isinstance(events, EventStore):
        start_ms, stop_ms = events.start_ms, events.stop_ms
    else:
        arrays, user_ids = to_event_arrays(events)
        start_ms, stop_ms = int(arrays.time_ms.min()), int(arrays.time_ms.max())
    end_ms = cfg.end_ms if cfg.end_ms is not None else stop_ms + 1
    if not start_ms < cfg.cutoff_ms < end_ms:
        raise TrainingError(
            f"cutoff {_iso(cfg.cutoff_ms)} is outside the data ({_iso(start_ms)} .. {_iso(end_ms)})"
        )
    last_complete = spec.index(end_ms) - 1
    test_hi = last_complete - spec.horizon
    covered = test_hi >= -1
    source: TensorSource
    if arrays is None:
        assert isinstance(events, EventStore)
        first = events.first_window(spec)
        source = events.window_cells(spec, first, max(last_complete, -1))
    else:
        first = first_window(arrays, spec)
        source = InMemoryTensors(build_tensor(arrays, spec, max(last_complete, -1)), user_ids)
    # The model is fitted on a sample of whole histories beyond MAX_FIT_USERS users (every
    # user below it), and every user is scored afterwards a block at a time.
    fit_codes = fit_sample(source.n_users, MAX_FIT_USERS, cfg.seed)
    tensor, user_ids = source.tensor(fit_codes)
    stages.start("fit")
    main = fit_at(tensor, user_ids, first, -1, cfg)
    stages.start("export")
    model = main.models[0]
    prior = main.prior

    onnx_path = cfg.out / "model.onnx"
    export_info = export.export_onnx(
        model, onnx_path, value_scale=prior.value_per_order_day
    ).to_dict()
    export.check_recurrent_op(onnx_path, members=max(1, len(main.models) - 1))
    test_windows = list(range(-1, test_hi + 1)) if covered else [-1]
    fit = fit_prior(prior.horizon_weeks)
    # The export is checked on the first customers at the cutoff (of the first users coded).
    head = np.arange(min(len(user_ids), 4 * VERIFY_ROWS))
    sample = origin_set(
        rows_of(tensor, head), user_ids[head], [-1], last_complete, fit, prior=prior
    )
    sample = sample.select(np.arange(len(sample)) < VERIFY_ROWS)
    diffs = export.verify_against_keras(
        onnx_path,
        model,
        {INPUT_NAME: main.norm.apply(sample.sequences), SUMMARY_INPUT_NAME: sample.summary},
        value_scale=prior.value_per_order_day,
    )
    onnx_sha = sha256_file(onnx_path)
    model_version = "m-" + onnx_sha[:12]

    # Scores come from ONNX Runtime, the scorer the worker uses, fed raw sequences only: the
    # summary is recomputed from them with the manifest's prior, as in the worker.
    from serving.scorer import load_model
    from training.offline import score_rows

    placeholder = RiskThresholds(medium=0.5, high=0.9)
    reference = fit_input_reference(tensor, -1)
    tmp_manifest = Manifest(
        model_version,
        spec,
        main.norm,
        placeholder,
        onnx_sha,
        prior=prior,
        input_reference=reference,
    )
    (cfg.out / "manifest.json").write_text(json.dumps(tmp_manifest.to_dict(), indent=2))
    # The served order forecast's level (features.forecast): chosen on the population at the
    # cutoff from the model's own scores, no outcome read, so that its total is the model's.
    # The served churn's recalibration (features.calibration), on the latest origin whose
    # horizon is known: the pseudo-cutoff's customers, kept only if it ranks them better.
    # Both from the graph's raw outputs, with the same pure code the scorer then applies.
    raw = load_model(cfg.out)
    labelled = main.select_val.select(main.select_val.complete)
    raw_val = raw.score(labelled.sequences)
    churn_calibration, calibration_info = fit_churn_calibration(
        raw_val.churn_probability,
        raw_val.means(),
        labelled.churn,
        cfg.seed,
        earlier=functools.partial(_earlier_scores, tensor, user_ids, first, fit, prior, raw),
    )
    stages.start("evaluate")
    # When the model was fitted on a sample, scoring reads every block afresh: the sample's
    # tensor is let go for the scoring's peak, and read again only if folds or quantization
    # ask for it. Fitted on everyone, it is the one block scored.
    kept = tensor if fit_codes is None else None
    del tensor
    # Every user at the test origins, a block at a time: the graph's raw outputs and the
    # baselines that read sequences, kept per row; the sequences themselves are dropped.
    test = _score_test(
        source, (fit_codes, kept, user_ids), raw, test_windows, last_complete, fit, prior
    )
    at_cutoff = test.window_index == -1
    cut_churn = (
        test.raw_churn[at_cutoff]
        if churn_calibration is None
        else churn_calibration.apply(test.raw_churn[at_cutoff], test.raw_mean[at_cutoff]).astype(
            np.float32
        )
    )
    # Whose total the forecast keeps (training.model.level_source): the corrected model's, or
    # the prior's as the summary reads it (the chosen customer-base model with the calendar).
    cut_mean = test.raw_mean[at_cutoff].astype(np.float64)
    prior_total = float(test.prior_expected[at_cutoff].sum())
    level = dict(main.info["level"])
    level.update(prior_total=prior_total, model_total=float(cut_mean.sum()))
    scale = prior_total / max(float(cut_mean.sum()), 1e-12) if level["source"] == "prior" else 1.0
    main.info["level"] = level
    # The served distribution (features.forecast): each customer's ZINB of shape r + x where
    # the model has a customer-base prior, the ZIP where it has none.
    orders_kind = "zip_quantile" if prior is None else "zinb_quantile"
    tmp_manifest = replace(tmp_manifest, orders_kind=orders_kind)
    cut_shape = orders_shape(tmp_manifest, test.last[at_cutoff])
    orders_level = total_level(cut_mean, cut_churn, cfg.seed, scale=scale, shape=cut_shape)
    log.info(
        "served order forecast: the %.4f-quantile of each customer's %s, total from the %s (%s)",
        orders_level,
        "ZINB" if cut_shape is not None else "ZIP",
        level["source"],
        level["why"],
    )
    tmp_manifest = replace(
        tmp_manifest, churn_calibration=churn_calibration, orders_level=orders_level
    )
    (cfg.out / "manifest.json").write_text(json.dumps(tmp_manifest.to_dict(), indent=2))
    scorer = load_model(cfg.out)
    val_scores = score_rows(scorer, main.select_val)
    thresholds = churn_thresholds(val_scores["churn_probability"].to_numpy(), main.select_val.churn)
    test_scores = test.frame(
        served(scorer.manifest, test.raw_mean, test.raw_spend, test.raw_churn, test.last)
    )
    pareto = None
    if covered:
        x, t_x, age, ordered = lifetime_summary(test.last[at_cutoff].astype(np.float64))
        # Four parameters of the customer base: beyond MAX_FIT_USERS customers a seeded
        # sample of them fits them (every customer below it).
        pick = fit_sample(int(ordered.sum()), MAX_FIT_USERS, cfg.seed)
        x, t_x, age = (v[ordered] if pick is None else v[ordered][pick] for v in (x, t_x, age))
        try:
            pareto = fit_pareto_nbd(x, t_x, age)
        except Exception as exc:  # a baseline that cannot fit must not sink the model
            log.warning("Pareto/NBD baseline not fitted: %s", exc)
    metrics: dict[str, Any] = {}
    lifts: dict[str, Any] = {}
    rolling: dict[str, Any] = {}
    if covered:
        preds = {
            "model": {k: test_scores[k].to_numpy(np.float64) for k in OUTPUT_NAMES},
            "model_mean": _mean_of(test_scores),
            **test.baselines,
            **pareto_predictions(test.last, test.log_value, prior, pareto),
        }
        cut_preds = {m: {k: v[at_cutoff] for k, v in p.items()} for m, p in preds.items()}
        metrics = evaluate_rows(test.select(at_cutoff), cut_preds)
        lifts = lift_rows(test.select(at_cutoff), cut_preds)
        if len(test_windows) > 1:
            rolling["test_window_ends"] = evaluate_rows(test, preds)
    # The pseudo-cutoff one horizon before C: a rolling origin no test data touched (none in
    # a history shorter than a horizon plus two windows).
    rolling["pseudo_cutoff"] = None
    if len(main.select_val):
        select_preds = {
            "model": {k: val_scores[k].to_numpy(np.float64) for k in OUTPUT_NAMES},
            "model_mean": _mean_of(val_scores),
            **baseline_predictions(main.select_val, _prior_of(main.select_val, fit), None),
        }
        rolling["pseudo_cutoff"] = _brief(evaluate_rows(main.select_val, select_preds))
    if kept is None and (cfg.cv_folds or cfg.quantize):
        kept = source.tensor(fit_codes)[0]
    folds = _rolling_folds(kept, user_ids, first, cfg) if kept is not None and cfg.cv_folds else []

    quant: dict[str, Any] | None = None
    if kept is not None and cfg.quantize:
        # On the fitted users' customers at the cutoff (everyone's below MAX_FIT_USERS).
        quant_rows = origin_set(kept, user_ids, [-1], last_complete, fit, prior=prior)
        quant = _quantize(cfg, onnx_path, quant_rows, metrics)

    stages.finish()
    cut_rows = test.select(at_cutoff)
    last = cut_rows.last
    age = lifetime_summary(last.astype(np.float64))[2]
    season_factor = horizon_multiplier(prior.season, last, age, prior.customer_base.alpha, spec)
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
            "train_origins": [_iso(spec.end_ms(first)), _iso(spec.end_ms(-2))],
            "pseudo_cutoff": _iso(spec.end_ms(-1 - spec.horizon)),
            "test_window_ends": [_iso(spec.end_ms(w)) for w in test_windows],
            "samples": {
                "train": main.n_train,
                "pseudo_cutoff": len(main.select_val),
                "test": len(test),
                "cutoff": len(cut_rows),
            },
            "users": {
                "cutoff": len(cut_rows),
                "total": source.n_users,
                # MAX_FIT_USERS: the model's histories are a sample of the shop's beyond it.
                "fitted_on": source.n_users if fit_codes is None else len(fit_codes),
            },
            "base_rates": {
                "test_churn": float((cut_rows.orders_total == 0).mean()) if covered else None,
            },
        },
        "population": "every customer with an order before the window end, however long ago, "
        "and every user with an event in the last lookback windows",
        "target": "orders = distinct UTC days with a purchase (order days); churn = no order "
        "day in the horizon; spend = purchase value in the horizon",
        "prior": prior.to_dict(),
        "churn_calibration": calibration_info,
        "orders_forecast": {
            "kind": orders_kind,
            "served": "expected_orders: each customer's level-quantile of the zero-inflated "
            + (ZINB_TEXT if orders_kind == "zinb_quantile" else "Poisson")
            + " with the model's mean and P(no order); model_mean: the mean itself",
            "level": orders_level,
            "chosen_on": "the population at the cutoff, so that the served total equals the "
            f"{'model' if level['source'] == 'model' else 'prior'}'s expected total (no "
            "outcome read; training.level says why)",
        },
        "calendar": {
            "found": main.info["calendar"],
            "horizon_factor_at_cutoff": {
                "mean": float(season_factor.mean()) if len(season_factor) else 1.0,
                "min": float(season_factor.min()) if len(season_factor) else 1.0,
                "max": float(season_factor.max()) if len(season_factor) else 1.0,
            },
        },
        "training": {
            **{k: v for k, v in main.info.items() if k not in ("summary_mean", "summary_std")},
            "epochs_run": main.info["epochs"],
        },
        "export": {"onnx_vs_keras_max_abs_diff": diffs, "opset": 17},
        "thresholds": asdict(thresholds),
        "metrics": metrics,
        "lift_by_decile": lifts,
        "rolling_origin": {**rolling, "folds": folds},
        "quantized": quant,
        "resources": stages.to_dict(),
        "source": cfg.source,
        "seconds": round(time.perf_counter() - started, 1),
    }
    manifest = Manifest(
        model_version,
        spec,
        main.norm,
        thresholds,
        onnx_sha,
        prior=prior,
        churn_calibration=churn_calibration,
        orders_level=orders_level,
        orders_kind=orders_kind,
        input_reference=reference,
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
    predictions = test_scores[at_cutoff].drop(columns=["window_end_ms"])
    predictions.to_csv(cfg.out / "predictions.csv", index=False)
    if metrics:
        weekly = _weekly(test, test_scores)
        report.write_report(
            cfg.out,
            metrics,
            "model",
            history={
                "loss": main.info["selection"]["loss"],
                "val_loss": main.info["selection"]["val_loss"][1:],
            },
            churn_p=test_scores["churn_probability"].to_numpy()[at_cutoff],
            churn_y=(cut_rows.orders_total == 0).astype(float),
            orders_pred=test_scores["expected_orders"].to_numpy()[at_cutoff],
            orders_actual=cut_rows.orders_total,
            weekly=weekly,
            export_info={"onnx_vs_keras_max_abs_diff": diffs},
            extra={k: v for k, v in report_data.items() if k != "metrics"},
        )
    else:
        (cfg.out / "report.json").write_text(json.dumps(report_data, indent=2, default=str))
    log.info("wrote %s in %.1fs", cfg.out, time.perf_counter() - started)
    return report_data


def _mean_of(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model's expectation as a compared forecast: the served scores with the mean."""
    out = {k: scores[k].to_numpy(np.float64) for k in OUTPUT_NAMES}
    out["expected_orders"] = scores["mean_orders"].to_numpy(np.float64)
    return out


def _prior_of(rows: OriginSet, fit: PriorFit) -> PriorSpec:
    return prior_at(rows.sequences[:, -1, :], fit)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {
            "orders_mae": m["orders"]["mae"],
            "orders_bias": m["orders"]["bias"],
            "churn_roc_auc": m["churn"]["roc_auc"],
        }
        for name, m in metrics.items()
    }


def _weekly(test: Outcomes, scores: pd.DataFrame) -> dict[str, Any] | None:
    """Per test origin: actual vs predicted order days over the horizon, summed."""
    done = test.complete
    if not done.any():
        return None
    frame = (
        pd.DataFrame(
            {
                "end": test.window_end_ms[done],
                "actual": test.orders_total[done],
                "predicted": scores["expected_orders"].to_numpy()[done],
            }
        )
        .groupby("end")
        .sum()
    )
    return {
        "window_end": pd.to_datetime(frame.index, unit="ms").to_numpy(),
        "actual": frame["actual"].to_numpy(),
        "predicted": frame["predicted"].to_numpy(),
    }


def _rolling_folds(
    tensor: WindowTensor, user_ids: np.ndarray, first: int, cfg: TrainConfig
) -> list[dict[str, Any]]:
    """Refit at earlier cutoffs ``k * H`` windows before ``C`` (data after ``C`` unseen) and
    compare the fold's model (Keras, same graph as the export) with BG/NBD at the fold's cutoff."""
    from training.model import predict_residual

    folds: list[dict[str, Any]] = []
    spec = tensor.spec
    for k in range(cfg.cv_folds, 0, -1):
        cut = -1 - k * spec.horizon
        try:
            fold = fit_at(tensor, user_ids, first, cut, cfg)
        except TrainingError as exc:
            folds.append({"cutoff": _iso(spec.end_ms(cut)), "skipped": str(exc)})
            continue
        rows = origin_set(
            tensor,
            user_ids,
            [cut],
            cut + spec.horizon,
            fit_prior(fold.prior.horizon_weeks),
            prior=fold.prior,
        )

        pred = predict_residual(
            fold.models[0],
            {INPUT_NAME: fold.norm.apply(rows.sequences), SUMMARY_INPUT_NAME: rows.summary},
            fold.prior.value_per_order_day,
        )
        preds = {
            "model": {k2: np.asarray(v, np.float64) for k2, v in pred.items()},
            **baseline_predictions(rows, fold.prior, None),
        }
        folds.append({"cutoff": _iso(spec.end_ms(cut)), **_brief(evaluate_rows(rows, preds))})
        log.info("rolling origin %s: %s", folds[-1]["cutoff"], folds[-1])
    return folds


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    model = metrics.get("model")
    if not model:
        return {}
    bg = metrics.get("bgnbd")
    return {
        "test_orders_mae": model["orders"]["mae"],
        "test_orders_bias": model["orders"]["bias"],
        "test_spend_mae": model["spend"]["mae"],
        "test_spend_bias": model["spend"]["bias"],
        "test_churn_roc_auc": model["churn"]["roc_auc"],
        "bgnbd_orders_mae": bg["orders"]["mae"] if bg else None,
        "bgnbd_churn_roc_auc": bg["churn"]["roc_auc"] if bg else None,
        "beats_all_baselines_on_orders_mae": all(
            model["orders"]["mae"] <= m["orders"]["mae"] for k, m in metrics.items() if k != "model"
        ),
        "beats_all_baselines_on_churn_roc_auc": all(
            model["churn"]["roc_auc"] >= m["churn"]["roc_auc"]
            for k, m in metrics.items()
            if k != "model"
        ),
    }


def _quantize(
    cfg: TrainConfig, onnx_path: Path, rows: OriginSet, metrics: dict[str, Any]
) -> dict[str, Any]:
    import onnxruntime as ort

    from serving.scorer import Scorer
    from training import export
    from training.offline import score_rows

    qdir = cfg.out / "quantized"
    qdir.mkdir(exist_ok=True)
    qpath = qdir / "model.onnx"
    export.quantize_dynamic_int8(onnx_path, qpath)
    base = Manifest.from_dict(json.loads((cfg.out / "manifest.json").read_text()))
    session = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"])
    scores = score_rows(Scorer(base, session, qpath), rows)
    out: dict[str, Any] = {
        "path": str(qpath),
        "bytes": qpath.stat().st_size,
        "fp32_bytes": onnx_path.stat().st_size,
    }
    if metrics:
        preds = {"model": {k: scores[k].to_numpy(np.float64) for k in OUTPUT_NAMES}}
        out["metrics"] = evaluate_rows(rows, preds)["model"]
    return out
