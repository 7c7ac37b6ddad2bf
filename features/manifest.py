"""The model manifest: the contract between a trained model and the worker that serves it.

Owns the :class:`Manifest` shape (what ``manifest.json`` beside ``model.onnx`` holds) and
:func:`check_compatible`, which compares a manifest with this code's feature definition and
says precisely what does not match. Reading and writing files is the caller's job
(``training`` writes, ``stream`` reads), so this stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from features.calibration import ChurnCalibration
from features.drift import InputReference
from features.signals import RiskThresholds
from features.summary import N_SUMMARY, SUMMARY_NAMES, PriorSpec
from features.windows import (
    FEATURE_DEFINITION_VERSION,
    FEATURE_NAMES,
    FEATURE_TRANSFORMS,
    N_FEATURES,
    NormStats,
    WindowSpec,
    contract_fingerprint,
)

MANIFEST_FORMAT = 1
INPUT_NAME = "sequence"
SUMMARY_INPUT_NAME = "summary"
OUTPUT_NAMES = ("expected_orders", "expected_spend", "churn_probability")
ORDERS_MEANINGS = {
    "zinb_quantile": "expected_orders is served as each customer's level-quantile of the "
    "zero-inflated negative binomial with the graph's mean and P(no order) and the shape "
    "r + x (the prior's r, the customer's repeat order days); the mean is served as "
    "mean_orders (features.forecast)",
    "zip_quantile": "expected_orders is served as each customer's level-quantile of the "
    "zero-inflated Poisson with the graph's mean and P(no order); the mean is served as "
    "mean_orders (features.forecast)",
}
"""The served order forecasts this code knows, by the manifest's ``orders_forecast.kind``."""


class ManifestError(ValueError):
    """The manifest is malformed or does not match this code's feature definition."""


@dataclass(frozen=True)
class Manifest:
    model_version: str
    spec: WindowSpec
    norm: NormStats
    thresholds: RiskThresholds
    onnx_sha256: str
    onnx_file: str = "model.onnx"
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_transforms: tuple[str, ...] = FEATURE_TRANSFORMS
    feature_fingerprint: str = field(default_factory=contract_fingerprint)
    feature_definition_version: int = FEATURE_DEFINITION_VERSION
    prior: PriorSpec | None = None
    """The BG/NBD prior behind the ``summary`` input; ``None`` for a sequence-only model."""
    churn_calibration: ChurnCalibration | None = None
    """The served churn's recalibration (:mod:`features.calibration`); ``None`` serves the
    churn head as it is."""
    orders_level: float | None = None
    """The quantile level of the served order forecast (:mod:`features.forecast`); ``None``
    (a model exported before it) serves the model's mean."""
    orders_kind: str = "zip_quantile"
    """Whose quantile is served: ``zinb_quantile`` (the zero-inflated negative binomial of
    each customer's posterior shape, :func:`features.forecast.posterior_shape`; needs the
    prior's ``r``) or ``zip_quantile`` (the zero-inflated Poisson: models exported before
    the shape was served)."""
    input_reference: InputReference | None = None
    """The training distribution of the window features (:mod:`features.drift`); ``None``
    for a model exported before it: the worker then measures no drift."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Training summary, metrics, library versions: informative, not checked."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "model_version": self.model_version,
            "onnx_file": self.onnx_file,
            "onnx_sha256": self.onnx_sha256,
            "features": {
                "names": list(self.feature_names),
                "transforms": list(self.feature_transforms),
                "fingerprint": self.feature_fingerprint,
                "definition_version": self.feature_definition_version,
            },
            "window": {
                "length_ms": self.spec.length_ms,
                "origin_ms": self.spec.origin_ms,
                "seq_len": self.spec.seq_len,
                "horizon": self.spec.horizon,
                "lookback": self.spec.lookback,
            },
            "normalisation": {"mean": list(self.norm.mean), "std": list(self.norm.std)},
            "inputs": [
                {
                    "name": INPUT_NAME,
                    "dtype": "float32",
                    "shape": ["batch", self.spec.seq_len, len(self.feature_names)],
                    "meaning": "last seq_len closed window vectors, oldest first, "
                    "transformed and normalised with the stats above",
                },
                *(
                    [
                        {
                            "name": SUMMARY_INPUT_NAME,
                            "dtype": "float32",
                            "shape": ["batch", N_SUMMARY],
                            "meaning": "features.summary.summarize() of the raw sequence with "
                            "the prior below (raw; the graph normalises it)",
                            "columns": list(SUMMARY_NAMES),
                        }
                    ]
                    if self.prior is not None
                    else []
                ),
            ],
            "outputs": [
                {
                    "name": "expected_orders",
                    "shape": ["batch"],
                    "meaning": "expected number of orders in the next horizon windows",
                },
                {
                    "name": "expected_spend",
                    "shape": ["batch"],
                    "meaning": "expected spend in the next horizon windows (data currency)",
                },
                {
                    "name": "churn_probability",
                    "shape": ["batch"],
                    "meaning": "probability of no order in the next horizon windows",
                },
            ],
            "thresholds": {"medium": self.thresholds.medium, "high": self.thresholds.high},
            **(
                {
                    "churn_calibration": {
                        **self.churn_calibration.to_dict(),
                        "meaning": "churn_probability is served as sigmoid(a * logit(graph "
                        "churn) + b * log(graph expected_orders) + c), before the order "
                        "forecast reads it (features.calibration)",
                    }
                }
                if self.churn_calibration is not None
                else {}
            ),
            **(
                {
                    "orders_forecast": {
                        "kind": self.orders_kind,
                        "level": self.orders_level,
                        "meaning": ORDERS_MEANINGS[self.orders_kind],
                    }
                }
                if self.orders_level is not None
                else {}
            ),
            **({"prior": self.prior.to_dict()} if self.prior is not None else {}),
            **(
                {"input_reference": self.input_reference.to_dict()}
                if self.input_reference is not None
                else {}
            ),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            if data.get("format") != MANIFEST_FORMAT:
                raise ManifestError(
                    f"manifest format {data.get('format')!r}, this code reads {MANIFEST_FORMAT}"
                )
            feats, win, norm = data["features"], data["window"], data["normalisation"]
            known = {
                "format",
                "model_version",
                "onnx_file",
                "onnx_sha256",
                "features",
                "window",
                "normalisation",
                "inputs",
                "outputs",
                "thresholds",
                "prior",
                "input_reference",
                "orders_forecast",
                "churn_calibration",
            }
            orders = _orders_forecast(data.get("orders_forecast"), "prior" in data)
            return cls(
                model_version=str(data["model_version"]),
                spec=WindowSpec(
                    int(win["length_ms"]),
                    int(win["origin_ms"]),
                    int(win["seq_len"]),
                    int(win["horizon"]),
                    int(win["lookback"]),
                ),
                norm=NormStats(
                    tuple(float(x) for x in norm["mean"]), tuple(float(x) for x in norm["std"])
                ),
                thresholds=RiskThresholds.from_mapping(data["thresholds"]),
                onnx_sha256=str(data["onnx_sha256"]),
                onnx_file=str(data.get("onnx_file", "model.onnx")),
                feature_names=tuple(str(x) for x in feats["names"]),
                feature_transforms=tuple(str(x) for x in feats["transforms"]),
                feature_fingerprint=str(feats["fingerprint"]),
                feature_definition_version=int(feats["definition_version"]),
                prior=PriorSpec.from_dict(data["prior"]) if "prior" in data else None,
                orders_level=orders[0],
                orders_kind=orders[1],
                churn_calibration=(
                    ChurnCalibration.from_dict(data["churn_calibration"])
                    if "churn_calibration" in data
                    else None
                ),
                input_reference=(
                    InputReference.from_dict(data["input_reference"])
                    if "input_reference" in data
                    else None
                ),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"manifest is malformed: {type(exc).__name__}: {exc}") from None


def _orders_forecast(block: Any, has_prior: bool) -> tuple[float | None, str]:
    """The served order forecast's ``(level, kind)``; ``(None, "zip_quantile")`` without one
    (a model exported before it serves its mean)."""
    if block is None:
        return None, "zip_quantile"
    if not isinstance(block, dict):
        raise ManifestError(f"orders_forecast must be an object, not {type(block).__name__}")
    kind = block.get("kind")
    if kind not in ORDERS_MEANINGS:
        raise ManifestError(
            f"orders_forecast kind {kind!r}, this code serves {' or '.join(ORDERS_MEANINGS)}"
        )
    if kind == "zinb_quantile" and not has_prior:
        raise ManifestError(
            "orders_forecast kind 'zinb_quantile' reads the prior's r, and the manifest has "
            "no prior"
        )
    level = float(block["level"])
    if not 0.0 < level < 1.0:
        raise ManifestError(f"orders_forecast level {level} is not in (0, 1)")
    return level, str(kind)


def check_compatible(manifest: Manifest) -> None:
    """Raise :class:`ManifestError` naming every way the manifest differs from this code."""
    problems: list[str] = []
    if manifest.feature_names != FEATURE_NAMES:
        missing = [n for n in FEATURE_NAMES if n not in manifest.feature_names]
        extra = [n for n in manifest.feature_names if n not in FEATURE_NAMES]
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "order differs"
        problems.append(f"feature names differ from this code's definition ({detail})")
    if manifest.feature_transforms != FEATURE_TRANSFORMS:
        problems.append("feature transforms differ from this code's definition")
    if manifest.feature_definition_version != FEATURE_DEFINITION_VERSION:
        problems.append(
            f"feature definition version {manifest.feature_definition_version}, "
            f"code has {FEATURE_DEFINITION_VERSION}"
        )
    if manifest.feature_fingerprint != contract_fingerprint():
        problems.append(
            f"feature fingerprint {manifest.feature_fingerprint} != code's {contract_fingerprint()}"
        )
    if len(manifest.norm.mean) != N_FEATURES or len(manifest.norm.std) != N_FEATURES:
        problems.append(
            f"normalisation has {len(manifest.norm.mean)}/{len(manifest.norm.std)} "
            f"values, features are {N_FEATURES}"
        )
    if any(s <= 0 for s in manifest.norm.std):
        problems.append("normalisation std has non-positive values")
    if not 0.0 < manifest.thresholds.medium <= manifest.thresholds.high < 1.0:
        problems.append(f"thresholds {manifest.thresholds} are not 0 < medium <= high < 1")
    if problems:
        raise ManifestError("model manifest does not match this worker: " + "; ".join(problems))
