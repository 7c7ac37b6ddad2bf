"""Users in blocks: the window tensor of a sample of users to fit on, and of every user, one
bounded block at a time, to score.

Owns :class:`TensorSource` (what the training pipeline asks of a feature engine), its
in-memory adapter :class:`InMemoryTensors` (the pandas engine's whole tensor, sliced), and
the two rules that bound memory by users: :func:`fit_sample` (who the model is fitted on) and
:func:`user_blocks` (how everyone is scored). The DuckDB engine's adapter is
:class:`training.outofcore.WindowCells`, which reads any block from its cell tables on disk.

Why this is exact: a user's window features never read another user's events
(:func:`features.batch.tensor_from_base` works along each user's own row), so a block's tensor
is those users' rows of the whole tensor -- tested for both engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np

from features.batch import WindowTensor

MAX_FIT_USERS: Final = 200_000
"""Most users whose histories the model is fitted on (priors, calendar, training rows,
selection). Beyond it a seeded uniform sample of users is taken: every shop below it (Online
Retail has 4,372) fits on everyone, exactly as before; a shop of 3M users fits on 200k whole
histories, plenty for BG/NBD's four parameters and for :data:`training.pipeline.MAX_SAMPLES`
training rows, in the memory of a 200k-user tensor."""

BLOCK_USERS: Final = 200_000
"""Users per block when every user is scored at the test origins."""


class TensorSource(Protocol):
    """Window tensors of any set of users, by user code (``0 .. n_users - 1``)."""

    @property
    def n_users(self) -> int: ...

    def tensor(self, codes: np.ndarray | None = None) -> tuple[WindowTensor, np.ndarray]:
        """The tensor of users ``codes`` (sorted, distinct; ``None``: all) and their ids."""
        ...


def rows_of(tensor: WindowTensor, codes: np.ndarray) -> WindowTensor:
    """Users ``codes``' rows of ``tensor``."""
    return WindowTensor(
        tensor.spec,
        tensor.first_index,
        tensor.features[codes],
        tensor.orders[codes],
        tensor.spend[codes],
    )


@dataclass(frozen=True)
class InMemoryTensors:
    """A whole tensor already in memory (the pandas engine), served by slicing."""

    whole: WindowTensor
    user_ids: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.whole.features.shape[0])

    def tensor(self, codes: np.ndarray | None = None) -> tuple[WindowTensor, np.ndarray]:
        if codes is None:
            return self.whole, self.user_ids
        return rows_of(self.whole, codes), self.user_ids[codes]


def fit_sample(n_users: int, cap: int, seed: int) -> np.ndarray | None:
    """Sorted codes of the users to fit on: ``None`` (everyone) up to ``cap``, else ``cap``
    users drawn uniformly without replacement by a generator seeded with ``seed``."""
    if n_users <= cap:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_users, size=cap, replace=False))


def user_blocks(n_users: int, size: int) -> Iterator[np.ndarray | None]:
    """Consecutive blocks of at most ``size`` codes covering every user (``None``: one block
    of everyone, when they fit in one)."""
    if n_users <= size:
        yield None
        return
    for lo in range(0, n_users, size):
        yield np.arange(lo, min(lo + size, n_users), dtype=np.int64)
