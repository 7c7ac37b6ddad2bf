"""Training rows at window-close origins: who is in the population and in which activity
stratum is read from the tensor's columns, which must be exactly the population rule on cut
sequences (a generated shop with browsers, buyers and customers who leave; and a year of real
order lines); beyond the cap every origin keeps the same share of each stratum."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.batch import WindowTensor, sequences_at
from features.windows import DAY_MS, I_ORDER_DAYS, WindowSpec, population_mask
from ingest.generator import generate_clickstream
from training.dataset import build_tensor, first_window, to_event_arrays
from training.origins import (
    SAMPLE_RULE,
    activity_strata,
    origin_set,
    plan_samples,
    population_rows,
)
from training.pipeline import fit_prior

WEEK_MS = 7 * DAY_MS


def _tensor(
    frame: pd.DataFrame, seq_len: int = 12, horizon: int = 4
) -> tuple[WindowTensor, np.ndarray]:
    arrays, user_ids = to_event_arrays(frame)
    last_ms = int(arrays.time_ms.max())
    cutoff = (last_ms - 6 * WEEK_MS) // DAY_MS * DAY_MS
    spec = WindowSpec(WEEK_MS, cutoff, seq_len=seq_len, horizon=horizon, lookback=seq_len)
    return build_tensor(arrays, spec, spec.index(last_ms) - 1), user_ids


def _assert_strata_are_the_population(tensor: WindowTensor) -> None:
    lookback = tensor.spec.lookback
    for w in range(tensor.first_index - 1, tensor.first_index + tensor.n_windows):
        strata = activity_strata(tensor, w)
        expected = population_mask(sequences_at(tensor, w), lookback)
        union = np.zeros_like(expected)
        for mask in strata.values():
            assert not np.any(union & mask)  # the strata do not overlap
            union |= mask
        np.testing.assert_array_equal(union, expected)
        np.testing.assert_array_equal(population_rows(tensor, w), np.flatnonzero(expected))
        rows = population_rows(tensor, w)
        np.testing.assert_array_equal(sequences_at(tensor, w, rows), sequences_at(tensor, w)[rows])


@pytest.fixture(scope="module")
def shop() -> pd.DataFrame:
    return generate_clickstream(n_users=3_000, days=200, seed=3)


def test_a_generated_shop_s_strata_are_exactly_its_population(shop: pd.DataFrame) -> None:
    tensor, _ = _tensor(shop)
    _assert_strata_are_the_population(tensor)
    last = activity_strata(tensor, tensor.first_index + tensor.n_windows - 1)
    # Every stratum is there: buyers, customers gone quiet, users who only browse.
    assert all(int(m.sum()) > 50 for m in last.values())


@pytest.mark.realdata
def test_uci_online_retail_s_strata_are_exactly_its_population(shared_data) -> None:  # type: ignore[no-untyped-def]
    from ingest.adapters import read_events

    frame = read_events(shared_data / "online_retail.csv.gz", "transactions").events
    tensor, _ = _tensor(frame, seq_len=26, horizon=13)
    _assert_strata_are_the_population(tensor)


def test_beyond_the_cap_each_origin_keeps_the_same_share_of_each_stratum(
    shop: pd.DataFrame,
) -> None:
    tensor, user_ids = _tensor(shop)
    arrays, _ = to_event_arrays(shop)
    first = first_window(arrays, tensor.spec) + 1
    windows = list(range(first, -1))
    fit = fit_prior(4.0)
    whole = origin_set(tensor, user_ids, windows, -1, fit)
    plan = plan_samples(tensor, windows, len(whole) // 4)
    assert plan.total == len(whole) and plan.fraction == pytest.approx(0.25, abs=1e-3)
    capped = origin_set(tensor, user_ids, windows, -1, fit, plan=plan, seed=1)
    assert abs(len(capped) - plan.max_rows) <= 3 * len(windows)  # rounding per stratum and origin
    for w in windows:
        strata = activity_strata(tensor, w)
        kept = set(capped.user_ids[capped.window_index == w].tolist())
        for mask in strata.values():
            n = int(mask.sum())
            got = len(kept & set(user_ids[mask].tolist()))
            assert abs(got - 0.25 * n) <= 0.5 + 1e-9
    # Seeded: the same rows again; another seed, other rows of the same sizes.
    again = origin_set(tensor, user_ids, windows, -1, fit, plan=plan, seed=1)
    np.testing.assert_array_equal(again.user_ids, capped.user_ids)
    other = origin_set(tensor, user_ids, windows, -1, fit, plan=plan, seed=2)
    assert len(other) == len(capped) and other.user_ids.tolist() != capped.user_ids.tolist()
    # The kept rows carry their own targets, not their neighbours'.
    row = int(np.flatnonzero(capped.complete)[0])
    user = int(np.flatnonzero(user_ids == capped.user_ids[row])[0])
    col = tensor.column(int(capped.window_index[row])) + 1
    np.testing.assert_array_equal(
        capped.orders[row], tensor.features[user, col : col + tensor.spec.horizon, I_ORDER_DAYS]
    )
    assert plan.to_dict()["rule"] == SAMPLE_RULE


def test_under_the_cap_every_row_is_kept_in_user_order(shop: pd.DataFrame) -> None:
    tensor, user_ids = _tensor(shop)
    windows = [-3, -2]
    fit = fit_prior(4.0)
    rows = origin_set(tensor, user_ids, windows, -1, fit, max_samples=10**9)
    expected = np.concatenate([user_ids[population_rows(tensor, w)] for w in windows])
    np.testing.assert_array_equal(rows.user_ids, expected)
    assert plan_samples(tensor, windows, 10**9).fraction == 1.0
