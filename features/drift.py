"""Input drift: the training distribution of the window features against the live one.

Owns :class:`InputReference` (what the manifest carries: per drift feature, quantile bin edges
of its training values and the share of training rows in each bin), :func:`fit_reference`,
:func:`bin_counts` (a set of live vectors binned by those edges; counts add up exactly across
partitions), and :func:`psi`, the population stability index of live counts against the
reference, with :func:`drifted` applying a threshold (issue 15).

Which vectors: the closed window's own vector (the last of each scored sequence) of the users
**active in that window**, in training as in the worker: the behaviour of those who came.
Users silent in the window (in the lookback or dormant) would add zero rows whose share only
says how long the stream has run: a fresh stream's first windows hold nobody silent yet.

Which features: the window's behaviour, :data:`DRIFT_FEATURES` (the base aggregates and the
cart conversion). The history features (tenure, totals, days since an order) grow with the age
of a shop's customer base and the calendar encoding is one value per window end: neither is a
change in how customers behave, and both would keep a drift flag up in a steady shop.

PSI = sum over bins of (a - e) * ln(a / e), shares smoothed by :data:`PSI_EPSILON`; the common
reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a shift (the default threshold).

Pure: numpy only, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from features.windows import BASE_FEATURES, FEATURE_INDEX

DRIFT_FEATURES: Final[tuple[str, ...]] = (*BASE_FEATURES, "cart_conversion")
QUANTILES: Final = 10
"""Deciles: at most 10 bins per feature (fewer where values repeat, e.g. mostly zero counts)."""
PSI_EPSILON: Final = 1e-4
DEFAULT_PSI_THRESHOLD: Final = 0.25


@dataclass(frozen=True)
class InputReference:
    """Per drift feature: ascending bin edges and the training share of each bin
    (``len(edges) + 1`` bins: below the first edge, between edges, at or above the last)."""

    features: tuple[str, ...]
    edges: tuple[tuple[float, ...], ...]
    expected: tuple[tuple[float, ...], ...]
    rows: int
    """Training rows the reference was fitted on."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vectors": "the window's vector of each user active in it",
            "rows": self.rows,
            "features": {
                name: {"edges": list(e), "expected": list(x)}
                for name, e, x in zip(self.features, self.edges, self.expected, strict=True)
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputReference:
        feats = d["features"]
        names = tuple(str(n) for n in feats)
        edges = tuple(tuple(float(x) for x in feats[n]["edges"]) for n in names)
        expected = tuple(tuple(float(x) for x in feats[n]["expected"]) for n in names)
        for name, e, x in zip(names, edges, expected, strict=True):
            if len(x) != len(e) + 1 or list(e) != sorted(set(e)):
                raise ValueError(f"input reference of {name!r}: edges and shares do not match")
        return cls(names, edges, expected, int(d["rows"]))

    @property
    def n_bins(self) -> int:
        return max(len(e) for e in self.edges) + 1


def _columns(vectors: npt.ArrayLike, features: Sequence[str]) -> npt.NDArray[np.float64]:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"vectors must be [rows, features], got shape {v.shape}")
    return v[:, [FEATURE_INDEX[f] for f in features]]


def fit_reference(
    vectors: npt.ArrayLike, quantiles: int = QUANTILES, features: Sequence[str] = DRIFT_FEATURES
) -> InputReference:
    """The reference of a set of training window vectors (``[rows, N_FEATURES]``, raw)."""
    cols = _columns(vectors, features)
    if cols.shape[0] == 0:
        raise ValueError("no vectors to fit an input reference on")
    qs = np.linspace(0.0, 1.0, quantiles + 1)[1:-1]
    edges: list[tuple[float, ...]] = []
    expected: list[tuple[float, ...]] = []
    for j in range(cols.shape[1]):
        e = np.unique(np.quantile(cols[:, j], qs))
        counts = np.bincount(np.searchsorted(e, cols[:, j], side="right"), minlength=e.size + 1)
        edges.append(tuple(float(x) for x in e))
        expected.append(tuple(float(c) for c in counts / cols.shape[0]))
    return InputReference(tuple(features), tuple(edges), tuple(expected), int(cols.shape[0]))


def bin_counts(reference: InputReference, vectors: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``[features, reference.n_bins]`` counts of ``vectors`` in the reference's bins."""
    cols = _columns(vectors, reference.features)
    out = np.zeros((len(reference.features), reference.n_bins), dtype=np.int64)
    for j, e in enumerate(reference.edges):
        idx = np.searchsorted(np.asarray(e), cols[:, j], side="right")
        out[j, : len(e) + 1] = np.bincount(idx, minlength=len(e) + 1)
    return out


def psi(reference: InputReference, counts: npt.ArrayLike) -> dict[str, float]:
    """Population stability index per feature of live ``counts`` (:func:`bin_counts`, summed
    over partitions) against the reference; NaN for a feature with no live row."""
    c = np.asarray(counts, dtype=np.float64)
    out: dict[str, float] = {}
    for j, (name, expected) in enumerate(zip(reference.features, reference.expected, strict=True)):
        live = c[j, : len(expected)]
        total = live.sum()
        if total <= 0:
            out[name] = float("nan")
            continue
        a = np.maximum(live / total, PSI_EPSILON)
        e = np.maximum(np.asarray(expected), PSI_EPSILON)
        out[name] = float(np.sum((a - e) * np.log(a / e)))
    return out


def drifted(index: Mapping[str, float], threshold: float) -> list[str]:
    """The features whose PSI exceeds ``threshold``, in reference order."""
    return [name for name, value in index.items() if value > threshold]


__all__ = [
    "DEFAULT_PSI_THRESHOLD",
    "DRIFT_FEATURES",
    "InputReference",
    "bin_counts",
    "drifted",
    "fit_reference",
    "psi",
]
