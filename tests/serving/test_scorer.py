"""The ONNX scorer (serving.scorer) on the shipped Online Retail model: it scores raw window
sequences in one call, and a model directory that cannot be served is refused with what does
not match (no manifest, bad JSON, a missing or altered ONNX file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from features.windows import N_FEATURES
from serving.scorer import ModelLoadError, load_model, sha256_file

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "onnx_models" / "default"


def test_the_shipped_model_scores_a_batch_of_raw_sequences() -> None:
    scorer = load_model(DEFAULT)
    spec = scorer.manifest.spec
    x = np.zeros((3, spec.seq_len, N_FEATURES), dtype=np.float32)
    scores = scorer.score(x)
    assert scores.expected_orders.shape == (3,)
    assert np.all((scores.churn_probability >= 0) & (scores.churn_probability <= 1))
    assert scorer.version == json.loads((DEFAULT / "manifest.json").read_text())["model_version"]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(DEFAULT, target)
    return target


def test_no_manifest_is_named(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match=r"no manifest\.json"):
        load_model(copy)


def test_a_manifest_that_is_not_json_is_named(copy: Path) -> None:
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(copy)


def test_a_missing_onnx_file_is_named(copy: Path) -> None:
    (copy / "model.onnx").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.onnx, not found"):
        load_model(copy)


def test_an_altered_onnx_file_fails_its_checksum(copy: Path) -> None:
    onnx = copy / "model.onnx"
    before = sha256_file(onnx)
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert sha256_file(onnx) != before
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(copy)


def test_the_shipped_models_carry_their_input_reference_and_older_manifests_load_without() -> None:
    """Both shipped manifests have the drift check's training distribution (written by
    ``python -m training.reference``; the ONNX files, hence the versions, are unchanged); a
    manifest from before it loads, and the worker then measures no drift."""
    import json

    from features.drift import DRIFT_FEATURES
    from features.manifest import Manifest

    for name in ("default", "generated"):
        path = Path(__file__).resolve().parents[2] / "onnx_models" / name
        scorer = load_model(path)
        reference = scorer.manifest.input_reference
        assert reference is not None and reference.features == DRIFT_FEATURES
        assert all(abs(sum(e) - 1.0) < 1e-9 for e in reference.expected)
        raw = json.loads((path / "manifest.json").read_text())
        del raw["input_reference"]
        assert Manifest.from_dict(raw).input_reference is None


def _with_orders_forecast(model_dir: Path, block: object, churn_calibration: object = None) -> None:
    """The copy's manifest with this orders forecast and churn calibration (None: without)."""
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    for key, value in (("orders_forecast", block), ("churn_calibration", churn_calibration)):
        manifest.pop(key, None)
        if value is not None:
            manifest[key] = value
    path.write_text(json.dumps(manifest))


def test_a_model_with_an_orders_level_serves_each_customers_quantile_and_the_mean_beside_it(
    copy: Path,
) -> None:
    from features.forecast import quantile_forecast

    rng = np.random.default_rng(4)
    spec = load_model(copy).manifest.spec
    x = rng.gamma(0.3, 1.0, (300, spec.seq_len, N_FEATURES)).astype(np.float32)
    _with_orders_forecast(copy, None)
    plain = load_model(copy).score(x)
    assert plain.mean_orders is None
    _with_orders_forecast(copy, {"kind": "zip_quantile", "level": 0.7})
    served = load_model(copy).score(x)
    assert served.mean_orders is not None
    np.testing.assert_array_equal(served.mean_orders, plain.expected_orders)
    np.testing.assert_array_equal(
        served.expected_orders,
        quantile_forecast(plain.expected_orders, plain.churn_probability, 0.7).astype(np.float32),
    )
    np.testing.assert_array_equal(served.churn_probability, plain.churn_probability)
    # Requests beyond one ONNX Runtime call are split and joined with the mean kept.
    big = np.concatenate([x] * 5)
    joined = load_model(copy).score(big)
    assert joined.mean_orders is not None
    np.testing.assert_array_equal(joined.mean_orders, np.concatenate([plain.expected_orders] * 5))


def test_a_zinb_forecast_reads_each_customers_shape_from_their_repeat_order_days(
    copy: Path,
) -> None:
    """The shape of a customer's count is the prior's r plus their repeat order days, read
    from the raw sequence's last vector, as training read it: a weekly shopper's forecast
    is nearly the ZIP's, a customer with one order day's is the wider posterior's."""
    from features.forecast import posterior_shape, quantile_forecast
    from features.windows import lifetime_summary

    rng = np.random.default_rng(6)
    scorer = load_model(copy)
    spec = scorer.manifest.spec
    assert scorer.manifest.prior is not None
    r = scorer.manifest.prior.customer_base.r
    x = rng.gamma(0.3, 1.0, (300, spec.seq_len, N_FEATURES)).astype(np.float32)
    _with_orders_forecast(copy, None)
    plain = load_model(copy).score(x)
    _with_orders_forecast(copy, {"kind": "zinb_quantile", "level": 0.6})
    served = load_model(copy).score(x)
    shape = posterior_shape(r, lifetime_summary(x[:, -1, :].astype(np.float64))[0])
    want = quantile_forecast(plain.expected_orders, plain.churn_probability, 0.6, shape)
    np.testing.assert_array_equal(served.expected_orders, want.astype(np.float32))
    assert served.mean_orders is not None
    np.testing.assert_array_equal(served.mean_orders, plain.expected_orders)
    # Split across ONNX Runtime calls, each row still reads its own shape.
    big = np.concatenate([x] * 5)
    np.testing.assert_array_equal(
        load_model(copy).score(big).expected_orders, np.concatenate([want] * 5).astype(np.float32)
    )


def test_a_zinb_forecast_without_a_prior_to_read_r_from_is_refused_at_load(copy: Path) -> None:
    _with_orders_forecast(copy, {"kind": "zinb_quantile", "level": 0.6})
    path = copy / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["prior"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="zinb_quantile' reads the prior's r"):
        load_model(copy)


@pytest.mark.parametrize(
    ("block", "says"),
    [
        ({"kind": "zip_quantile", "level": 1.5}, "level 1.5 is not in"),
        ({"kind": "median", "level": 0.5}, "kind 'median'"),
        ({"kind": "zip_quantile"}, "malformed"),
        ("zip_quantile", "must be an object, not str"),
        ({"kind": "zip_quantile", "level": "high"}, "malformed"),
    ],
)
def test_an_orders_forecast_this_code_cannot_serve_is_refused_at_load(
    copy: Path, block: object, says: str
) -> None:
    _with_orders_forecast(copy, block)
    with pytest.raises(ModelLoadError, match=says):
        load_model(copy)


def test_a_model_with_a_churn_calibration_serves_it_and_forecasts_orders_from_it(
    copy: Path,
) -> None:
    from features.calibration import ChurnCalibration
    from features.forecast import quantile_forecast

    rng = np.random.default_rng(5)
    spec = load_model(copy).manifest.spec
    x = rng.gamma(0.3, 1.0, (200, spec.seq_len, N_FEATURES)).astype(np.float32)
    _with_orders_forecast(copy, None)
    plain = load_model(copy).score(x)
    cal = ChurnCalibration(0.3, -1.4, -0.4)
    _with_orders_forecast(
        copy, {"kind": "zip_quantile", "level": 0.6}, churn_calibration=cal.to_dict()
    )
    served = load_model(copy).score(x)
    churn = cal.apply(plain.churn_probability, plain.expected_orders).astype(np.float32)
    np.testing.assert_array_equal(served.churn_probability, churn)
    np.testing.assert_array_equal(
        served.expected_orders,
        quantile_forecast(plain.expected_orders, churn, 0.6).astype(np.float32),
    )


def test_a_model_whose_prior_is_pareto_nbd_scores_with_it_and_a_broken_one_is_named(
    copy: Path,
) -> None:
    """A manifest whose prior is Pareto/NBD (chosen in training for a CDNOW-like shop): the
    scorer computes the summary from it, so a long-dormant one-time buyer, alive for BG/NBD
    until a repeat purchase, gets a higher churn risk; a Pareto/NBD prior without its
    parameters stops the load with the reason."""
    from features.windows import FEATURE_INDEX

    bg = load_model(copy)
    spec = bg.manifest.spec
    x = np.zeros((2, spec.seq_len, N_FEATURES), dtype=np.float32)
    x[:, -1, FEATURE_INDEX["order_days_total"]] = 1.0
    x[:, -1, FEATURE_INDEX["days_since_first_order"]] = [14.0, 300.0]
    x[:, -1, FEATURE_INDEX["days_since_last_order"]] = [14.0, 300.0]
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["prior"]["model"] = "pareto_nbd"
    manifest["prior"]["pareto_nbd"] = {"r": 0.5534, "alpha": 10.5802, "s": 0.6061, "beta": 11.6562}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    pn = load_model(copy)
    assert pn.manifest.prior is not None and pn.manifest.prior.model == "pareto_nbd"
    got, before = pn.score(x), bg.score(x)
    assert np.all(np.isfinite(got.expected_orders)) and np.all(np.isfinite(got.churn_probability))
    assert got.churn_probability[1] > got.churn_probability[0]
    assert not np.allclose(got.churn_probability, before.churn_probability)
    del manifest["prior"]["pareto_nbd"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="pareto_nbd"):
        load_model(copy)
