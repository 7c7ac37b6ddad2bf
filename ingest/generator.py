"""Seeded synthetic clickstreams in the canonical event shape (the same frame the adapters return).

This module owns the simulator used for load tests, replay demos and model smoke training when
real data is too short. Everything is vectorised numpy (no per-user or per-event Python loop):
a million events take about a second. The same ``(parameters, seed)`` gives the same frame.

The model of a shop (all rates are knobs of :class:`GeneratorConfig`):

* **Users** arrive over time: a share exists on day 0, the rest arrive uniformly over the span.
  Each has a heavy-tailed (lognormal) session rate and a purchase propensity.
* **Churn**: a share of users leave at a random date after arrival; their rate fades linearly
  over ``churn_decay_days`` and is zero afterwards (the fade is what a churn model can detect).
* **Sessions** follow one shop-wide intensity: hour-of-day profile (quiet nights, evening peak),
  day-of-week profile (weekend up), a yearly growth trend and a Q4 seasonal peak. Session times
  are drawn exactly from that intensity by inverting its cumulative integral.
* **Funnel** per session: views (geometric, focused on one category with popular products more
  likely), some views carted, some cart lines removed, a fraction of carting sessions buy the
  remaining lines as one order (``order_id`` groups the lines); a few purchase lines are
  returned days later. With the defaults ~2-3% of sessions purchase.
* **Products** belong to categories and brands; each has a lognormal price around its
  category's price level.

:func:`simulate` also returns the per-user ground truth (arrival, churn time, rates) for tests
and for evaluating churn models on synthetic data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from features.windows import DAY_MS
from ingest.adapters import CANONICAL_COLUMNS, STR_DTYPE, sort_events

HOUR_MS: Final = 3_600_000

# Relative session intensity by UTC hour: quiet 02-06, lunch bump, evening peak 19-21.
HOURLY_PROFILE: Final = np.array(
    [0.45, 0.3, 0.2, 0.15, 0.15, 0.2, 0.35, 0.6, 0.85, 1.0, 1.05, 1.1,
     1.2, 1.15, 1.05, 1.0, 1.05, 1.15, 1.35, 1.6, 1.75, 1.7, 1.3, 0.8]
)  # fmt: skip
# Monday .. Sunday.
WEEKLY_PROFILE: Final = np.array([1.0, 0.96, 0.95, 0.97, 1.02, 1.08, 1.12])


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the simulated shop; defaults give ~2-3% purchasing sessions."""

    initial_user_share: float = 0.6
    """Users active from the first day; the rest arrive uniformly over the span."""
    churn_share: float = 0.3
    """Users who leave at a uniform random time between arrival and the end of the span."""
    churn_decay_days: float = 14.0
    mean_sessions_per_day: float = 0.12
    activity_sigma: float = 1.1
    """Lognormal sigma of per-user session rates (heavy tail: a few very active users)."""
    mean_views_per_session: float = 4.0
    cart_session_rate: float = 0.10
    """Share of sessions (for an average user) that cart at least one product."""
    propensity_sigma: float = 0.6
    """Lognormal sigma of the per-user multiplier on carting."""
    extra_cart_lines_mean: float = 0.4
    remove_rate: float = 0.15
    """Per cart line: chance it is removed again (remove_from_cart)."""
    purchase_given_cart: float = 0.28
    return_rate: float = 0.03
    """Per purchase line: chance it is returned 3-30 days later (if within the span)."""
    mean_view_gap_s: float = 45.0
    n_products: int = 5_000
    n_categories: int = 60
    n_brands: int = 300
    brand_missing_share: float = 0.15
    yearly_growth: float = 0.15
    """Relative growth of traffic per year (trend)."""
    q4_amplitude: float = 0.25
    """Amplitude of the yearly seasonal cycle, peaking at the start of December."""


REGULAR_SHOP: Final = GeneratorConfig(
    mean_sessions_per_day=0.18,
    activity_sigma=0.4,
    mean_views_per_session=2.5,
    cart_session_rate=0.55,
    propensity_sigma=0.3,
    purchase_given_cart=0.85,
)
"""A shop whose customers order regularly (the demo's: README, *The demo's model*).

A visit every five to six days, two or three views a visit, and about 40 % of visits end in
an order, so a customer who stays orders every week or two and one who leaves stops ordering:
"no order day in the horizon", the model's churn, then tells churners from the others. With
the defaults only ~2 % of sessions buy and nearly everyone goes two weeks without an order.
Churn share, fade and arrivals are the defaults'."""

PRESETS: Final[dict[str, GeneratorConfig]] = {
    "default": GeneratorConfig(),
    "regular": REGULAR_SHOP,
}
"""Named shops for the command line (``clicksignals demo|replay|generate --shop NAME``)."""


@dataclass(frozen=True)
class SimulatedClickstream:
    events: pd.DataFrame
    """Canonical event frame (see :data:`ingest.adapters.CANONICAL_COLUMNS`)."""
    users: pd.DataFrame
    """Ground truth per user: user_id, arrival_ms, churn_ms (-1 if never), sessions_per_day,
    propensity, n_sessions."""


def _intensity(start_ms: int, hours: int, cfg: GeneratorConfig) -> np.ndarray:
    """Relative session intensity per hour of the span (mean about 1)."""
    t_ms = start_ms + np.arange(hours, dtype=np.int64) * HOUR_MS
    stamps = pd.to_datetime(t_ms, unit="ms", utc=True)
    hod = np.asarray(stamps.hour)
    dow = np.asarray(stamps.dayofweek)
    doy = np.asarray(stamps.dayofyear)
    years = (t_ms - start_ms) / (365.25 * DAY_MS)
    trend = 1.0 + cfg.yearly_growth * years
    season = 1.0 + cfg.q4_amplitude * np.cos(2 * np.pi * (doy - 335) / 365.25)
    daily = HOURLY_PROFILE / HOURLY_PROFILE.mean()
    weekly = WEEKLY_PROFILE / WEEKLY_PROFILE.mean()
    return np.asarray(daily[hod] * weekly[dow] * trend * season, dtype=np.float64)


def _ids(prefix: str, n: int, width: int) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)], dtype=object)


def simulate(
    n_users: int = 10_000,
    start: str | pd.Timestamp = "2024-01-01",
    days: int = 90,
    seed: int = 0,
    config: GeneratorConfig | None = None,
) -> SimulatedClickstream:
    """Simulate ``days`` of a shop with ``n_users`` users; deterministic for ``seed``."""
    if n_users < 1 or days < 1:
        raise ValueError("n_users and days must be >= 1")
    cfg = config or GeneratorConfig()
    rng = np.random.default_rng(seed)
    ts = pd.Timestamp(start)
    start_ms = int((ts.tz_localize("UTC") if ts.tzinfo is None else ts).value // 1_000_000)
    hours = days * 24
    end_ms = start_ms + days * DAY_MS

    # --- shop-wide intensity and its cumulative integral (for exact inverse sampling) -------
    lam = _intensity(start_ms, hours, cfg)
    cum = np.concatenate([[0.0], np.cumsum(lam)])  # integral up to each hour edge
    edges = np.arange(hours + 1, dtype=np.float64)  # in hours since start

    # --- users -------------------------------------------------------------------------------
    arrival_h = np.where(
        rng.random(n_users) < cfg.initial_user_share, 0.0, rng.random(n_users) * hours
    )
    churner = rng.random(n_users) < cfg.churn_share
    churn_h = np.where(churner, arrival_h + rng.random(n_users) * (hours - arrival_h), np.inf)
    sigma = cfg.activity_sigma
    rate = cfg.mean_sessions_per_day * np.exp(sigma * rng.standard_normal(n_users) - sigma**2 / 2)
    ps = cfg.propensity_sigma
    propensity = np.exp(ps * rng.standard_normal(n_users) - ps**2 / 2)
    active_end_h = np.minimum(churn_h, float(hours))
    c_lo = np.interp(arrival_h, edges, cum)
    c_hi = np.interp(active_end_h, edges, cum)
    n_sessions = rng.poisson(rate / 24.0 * (c_hi - c_lo))

    # --- sessions: times drawn from the intensity between arrival and churn ------------------
    s_user = np.repeat(np.arange(n_users), n_sessions)
    u = c_lo[s_user] + rng.random(len(s_user)) * (c_hi - c_lo)[s_user]
    s_hour = np.interp(u, cum, edges)
    # Fade before churn: drop sessions with probability rising linearly to 1 at churn time.
    to_churn_h = churn_h[s_user] - s_hour
    keep = rng.random(len(s_user)) < np.clip(to_churn_h / (cfg.churn_decay_days * 24), 0, 1)
    s_user, s_hour = s_user[keep], s_hour[keep]
    n_sess = len(s_user)
    n_sessions = np.bincount(s_user, minlength=n_users)
    s_start_ms = start_ms + s_hour * HOUR_MS

    # --- products -----------------------------------------------------------------------------
    n_prod, n_cat = cfg.n_products, cfg.n_categories
    p_cat = np.sort(rng.integers(0, n_cat, n_prod))  # products grouped by category
    cat_size = np.bincount(p_cat, minlength=n_cat)
    cat_first = np.concatenate([[0], np.cumsum(cat_size)[:-1]])
    cat_weight = rng.pareto(1.5, n_cat) + 0.2  # some categories much busier than others
    cat_weight = np.where(cat_size > 0, cat_weight, 0.0)
    cat_weight /= cat_weight.sum()
    cat_price_level = rng.normal(3.0, 0.8, n_cat)  # log price
    p_price = np.round(np.exp(cat_price_level[p_cat] + rng.normal(0, 0.5, n_prod)), 2)
    p_price = np.maximum(p_price, 0.01)
    p_brand = rng.integers(0, cfg.n_brands, n_prod)
    p_brand_missing = rng.random(n_prod) < cfg.brand_missing_share

    # --- views ----------------------------------------------------------------------------------
    n_views = rng.geometric(1.0 / cfg.mean_views_per_session, n_sess)
    s_cat = rng.choice(n_cat, size=n_sess, p=cat_weight)
    v_sess = np.repeat(np.arange(n_sess), n_views)
    n_v = len(v_sess)
    # 85% of views stay in the session's category; popular (low-index) products more likely.
    v_cat = np.where(rng.random(n_v) < 0.85, s_cat[v_sess], rng.choice(n_cat, n_v, p=cat_weight))
    v_prod = cat_first[v_cat] + (cat_size[v_cat] * rng.random(n_v) ** 2.5).astype(np.int64)
    gaps = rng.exponential(cfg.mean_view_gap_s * 1000.0, n_v)
    first_view = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    csum = np.cumsum(gaps)
    # Offsets restart per session: the first view is at the session start.
    v_time = s_start_ms[v_sess] + csum - csum[first_view][v_sess]

    # --- carts, removals, purchases -------------------------------------------------------------
    s_user_prop = propensity[s_user]
    carting = rng.random(n_sess) < np.clip(cfg.cart_session_rate * s_user_prop, 0, 0.9)
    n_cart = np.where(carting, 1 + rng.poisson(cfg.extra_cart_lines_mean, n_sess), 0)
    c_sess = np.repeat(np.arange(n_sess), n_cart)
    n_c = len(c_sess)
    c_view = first_view[c_sess] + (rng.random(n_c) * n_views[c_sess]).astype(np.int64)
    c_prod = v_prod[c_view]
    c_time = v_time[c_view] + 1000.0 + rng.exponential(20_000.0, n_c)
    c_removed = rng.random(n_c) < cfg.remove_rate
    r_time = c_time + 1000.0 + rng.exponential(60_000.0, n_c)

    buys = rng.random(n_sess) < cfg.purchase_given_cart
    b_mask = buys[c_sess] & ~c_removed
    b_idx = np.flatnonzero(b_mask)
    # The order completes after the session's last view/cart/removal.
    last = np.full(n_sess, -np.inf)
    np.maximum.at(last, v_sess, v_time)
    np.maximum.at(last, c_sess, np.where(c_removed, r_time, c_time))
    b_sess = c_sess[b_idx]
    b_time = last[b_sess] + 5_000.0 + rng.exponential(90_000.0, n_sess)[b_sess]
    b_qty = np.where(rng.random(len(b_idx)) < 0.85, 1, rng.integers(2, 5, len(b_idx)))

    ret = rng.random(len(b_idx)) < cfg.return_rate
    ret_time = b_time + rng.uniform(3, 30, len(b_idx)) * DAY_MS
    ret &= ret_time < end_ms
    t_idx = np.flatnonzero(ret)

    # --- assemble ---------------------------------------------------------------------------------
    rm_idx = np.flatnonzero(c_removed)
    parts_sess = [v_sess, c_sess, c_sess[rm_idx], b_sess, b_sess[t_idx]]
    parts_prod = [v_prod, c_prod, c_prod[rm_idx], c_prod[b_idx], c_prod[b_idx][t_idx]]
    parts_time = [v_time, c_time, r_time[rm_idx], b_time, ret_time[t_idx]]
    type_names = np.array(["view", "cart", "remove_from_cart", "purchase", "return"], dtype=object)
    e_type = np.repeat(np.arange(5), [len(p) for p in parts_sess])
    e_sess = np.concatenate(parts_sess)
    e_prod = np.concatenate(parts_prod)
    e_time = np.floor(np.concatenate(parts_time)).astype(np.int64)
    e_qty = np.concatenate(
        [np.ones(n_v + n_c + len(rm_idx), dtype=np.int64), b_qty, b_qty[t_idx]]
    ).astype(np.int64)
    is_order = e_type >= 3
    e_user = s_user[e_sess]

    # Keep only events inside the span (late-session spill-over past the end is cut).
    inside = e_time < end_ms
    user_ids = _ids("u", n_users, max(6, len(str(n_users - 1))))
    prod_ids = _ids("p", n_prod, max(5, len(str(n_prod - 1))))
    cat_ids = _ids("c", n_cat, 3)
    brand_ids = _ids("b", cfg.n_brands, 4)
    sess_ids = _ids("s", n_sess, max(8, len(str(n_sess - 1))))
    order_ids = _ids("o", n_sess, max(8, len(str(n_sess - 1))))

    brand_of = brand_ids[p_brand[e_prod]]
    brand_of[p_brand_missing[e_prod]] = None
    session_of = sess_ids[e_sess]
    session_of[e_type == 4] = None  # a return is not part of a browsing session
    order_of = order_ids[e_sess]
    order_of[~is_order] = None
    events = pd.DataFrame(
        {
            "event_time_ms": e_time[inside],
            "event_type": pd.Series(type_names[e_type][inside], dtype=STR_DTYPE),
            "user_id": pd.Series(user_ids[e_user][inside], dtype=STR_DTYPE),
            "product_id": pd.Series(prod_ids[e_prod][inside], dtype=STR_DTYPE),
            "category": pd.Series(cat_ids[p_cat[e_prod]][inside], dtype=STR_DTYPE),
            "brand": pd.Series(brand_of[inside], dtype=STR_DTYPE),
            "price": p_price[e_prod][inside],
            "quantity": e_qty[inside],
            "session_id": pd.Series(session_of[inside], dtype=STR_DTYPE),
            "order_id": pd.Series(order_of[inside], dtype=STR_DTYPE),
        },
        columns=list(CANONICAL_COLUMNS),
    )
    users = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype=STR_DTYPE),
            "arrival_ms": (start_ms + arrival_h * HOUR_MS).astype(np.int64),
            "churn_ms": np.where(
                np.isfinite(churn_h), start_ms + np.nan_to_num(churn_h, posinf=0.0) * HOUR_MS, -1
            ).astype(np.int64),
            "sessions_per_day": rate,
            "propensity": propensity,
            "n_sessions": n_sessions,
        }
    )
    return SimulatedClickstream(events=sort_events(events), users=users)


def generate_clickstream(
    n_users: int = 10_000,
    start: str | pd.Timestamp = "2024-01-01",
    days: int = 90,
    seed: int = 0,
    config: GeneratorConfig | None = None,
) -> pd.DataFrame:
    """The canonical event frame of :func:`simulate` (sorted by time, user)."""
    return simulate(n_users, start, days, seed, config).events


def users_for_events(target_events: int, days: int, config: GeneratorConfig | None = None) -> int:
    """Rough ``n_users`` giving about ``target_events`` over ``days`` (for benches and demos)."""
    cfg = config or GeneratorConfig()
    # Mean active share of the span: initial users ~ all of it, arrivals ~ half; churners lose
    # about half of what remains. Events per session: views + carts + removals + purchases.
    active = cfg.initial_user_share + (1 - cfg.initial_user_share) * 0.5
    active *= 1 - cfg.churn_share * 0.5
    carts = cfg.cart_session_rate * (1 + cfg.extra_cart_lines_mean)
    per_session = cfg.mean_views_per_session + carts * (
        1 + cfg.remove_rate + cfg.purchase_given_cart
    )
    per_user = cfg.mean_sessions_per_day * days * active * per_session
    return max(1, round(target_events / per_user))


__all__ = [
    "PRESETS",
    "REGULAR_SHOP",
    "GeneratorConfig",
    "SimulatedClickstream",
    "generate_clickstream",
    "simulate",
    "users_for_events",
]
