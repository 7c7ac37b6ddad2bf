"""Users in blocks (training/shards.py): who the model is fitted on, how everyone is scored,
and the pandas engine's tensor sliced by user."""

from __future__ import annotations

import numpy as np

from features.windows import DAY_MS, WindowSpec
from ingest.generator import generate_clickstream
from training.dataset import build_tensor, to_event_arrays
from training.shards import InMemoryTensors, fit_sample, user_blocks


def test_a_shop_under_the_cap_is_fitted_on_everyone_and_a_larger_one_on_a_seeded_sample() -> None:
    assert fit_sample(4_372, 200_000, seed=7) is None  # Online Retail's customers
    picked = fit_sample(3_000_000, 200_000, seed=7)
    assert picked is not None and len(picked) == 200_000
    assert np.all(np.diff(picked) > 0) and picked[0] >= 0 and picked[-1] < 3_000_000
    again = fit_sample(3_000_000, 200_000, seed=7)
    assert again is not None and np.array_equal(picked, again)
    # Uniform over codes, which run by first event: early and late customers alike.
    assert 0.45 < np.mean(picked < 1_500_000) < 0.55


def test_blocks_cover_every_user_once_in_code_order() -> None:
    assert list(user_blocks(150_000, 200_000)) == [None]
    blocks = list(user_blocks(450_001, 200_000))
    assert [len(b) for b in blocks if b is not None] == [200_000, 200_000, 50_001]
    joined = np.concatenate([b for b in blocks if b is not None])
    assert np.array_equal(joined, np.arange(450_001))


def test_the_in_memory_source_gives_a_blocks_rows_and_ids() -> None:
    frame = generate_clickstream(n_users=300, start="2024-01-01", days=90, seed=3)
    arrays, ids = to_event_arrays(frame)
    last_ms = int(frame.event_time_ms.max())
    spec = WindowSpec(7 * DAY_MS, last_ms // DAY_MS * DAY_MS - 14 * DAY_MS, 8, 2, 8)
    whole = build_tensor(arrays, spec, spec.index(last_ms) - 1)
    source = InMemoryTensors(whole, ids)
    assert source.n_users == len(ids)
    everyone, all_ids = source.tensor()
    assert everyone is whole and all_ids is ids
    codes = np.array([0, 5, 17, len(ids) - 1])
    part, part_ids = source.tensor(codes)
    assert part_ids.tolist() == ids[codes].tolist()
    np.testing.assert_array_equal(part.features, whole.features[codes])
    np.testing.assert_array_equal(part.spend, whole.spend[codes])
    assert part.first_index == whole.first_index and part.spec == whole.spec
