"""Tiny multi-task models train, export to ONNX with a fused LSTM/GRU op, and match Keras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from features.manifest import OUTPUT_NAMES
from serving.scorer import sha256_file
from training.export import (
    ExportError,
    check_recurrent_op,
    export_onnx,
    quantize_dynamic_int8,
    run_onnx,
    verify_against_keras,
)
from training.model import ModelConfig, predict, train_model

SEQ_LEN, N_FEATURES = 6, 5


def _data(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SEQ_LEN, N_FEATURES)).astype(np.float32)
    lam = np.exp(0.6 * x[:, -1, 0] + 0.3 * x[:, -2:, 1].mean(axis=1))
    orders = rng.poisson(lam).astype(np.float32)
    spend = (orders * rng.lognormal(3.0, 1.0, n)).astype(np.float32)
    churn = (orders == 0).astype(np.float32)
    return x, {"orders": orders, "spend": spend, "churn": churn}


def _cfg(cell: str) -> ModelConfig:
    return ModelConfig(cell=cell, units=8, dense_units=8, batch_size=64, epochs=2, patience=1)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    x_tr, y_tr = _data(384, 1)
    x_val, y_val = _data(128, 2)
    x_te, _ = _data(200, 3)
    return {"x_tr": x_tr, "y_tr": y_tr, "x_val": x_val, "y_val": y_val, "x_te": x_te}


@pytest.fixture(scope="module", params=["lstm", "gru"])
def trained(request: pytest.FixtureRequest, data: dict[str, Any], tmp_path_factory: Any) -> Any:
    cell = request.param
    model, history = train_model(
        data["x_tr"], data["y_tr"], data["x_val"], data["y_val"], _cfg(cell), progress=False
    )
    path = tmp_path_factory.mktemp(cell) / f"{cell}.onnx"
    info = export_onnx(model, path, metadata={"run": "test"})
    return cell, model, history, info


def test_history_and_predict(trained: Any, data: dict[str, Any]) -> None:
    _, model, history, _ = trained
    assert 1 <= len(history["loss"]) <= 2
    for key in ("loss", "val_loss", "orders_loss", "val_spend_loss", "churn_loss", "epoch_seconds"):
        assert len(history[key]) == len(history["loss"]), key
    pred = predict(model, data["x_te"])
    assert set(pred) == set(OUTPUT_NAMES)
    for name, values in pred.items():
        assert values.shape == (200,) and values.dtype == np.float32, name
        assert np.all(np.isfinite(values))
    assert np.all(pred["expected_orders"] > 0)
    assert np.all(pred["expected_spend"] >= 0)
    assert np.all((pred["churn_probability"] > 0) & (pred["churn_probability"] < 1))


def test_export_has_fused_recurrent_op_and_contract(trained: Any) -> None:
    cell, _, _, info = trained
    assert info.recurrent_op == cell.upper()
    assert check_recurrent_op(info.path) == cell.upper()
    proto = onnx.load(info.path)
    ops = {n.op_type for n in proto.graph.node}
    assert cell.upper() in ops and not ops & {"Loop", "Scan"}
    assert [i.name for i in proto.graph.input] == ["sequence"]
    assert [o.name for o in proto.graph.output] == list(OUTPUT_NAMES)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", SEQ_LEN, N_FEATURES]
    for out in proto.graph.output:
        assert out.type.tensor_type.elem_type == TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch"]
    assert any(i.domain in ("", "ai.onnx") and i.version >= 15 for i in proto.opset_import)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["cell"] == cell and meta["seq_len"] == str(SEQ_LEN) and meta["run"] == "test"
    assert info.sha256 == sha256_file(info.path)


def test_onnxruntime_matches_keras(trained: Any, data: dict[str, Any]) -> None:
    _, model, _, info = trained
    diffs = verify_against_keras(info.path, model, data["x_te"], atol=1e-4)
    assert set(diffs) == set(OUTPUT_NAMES)
    assert max(diffs.values()) < 1e-4
    # dynamic batch: 1 row and an odd count
    for n in (1, 37):
        out = run_onnx(info.path, data["x_te"][:n])
        ref = predict(model, data["x_te"][:n])
        for name in OUTPUT_NAMES:
            assert out[name].shape == (n,)
            np.testing.assert_allclose(out[name], ref[name], atol=1e-4, rtol=1e-5)


def test_verify_detects_mismatch(trained: Any, data: dict[str, Any]) -> None:
    _, model, _, info = trained
    head = model.get_layer("churn")
    saved = head.get_weights()
    try:
        head.set_weights([saved[0] + 0.5, saved[1]])
        with pytest.raises(ExportError, match="churn_probability"):
            verify_against_keras(info.path, model, data["x_te"])
    finally:
        head.set_weights(saved)


def test_quantize_dynamic(trained: Any, data: dict[str, Any], tmp_path: Path) -> None:
    cell, _, _, info = trained
    q = quantize_dynamic_int8(info.path, tmp_path / "q.onnx")
    # ORT quantises LSTM (com.microsoft.DynamicQuantizeLSTM) but has no quantised GRU.
    assert q["recurrent_quantized"] is (cell == "lstm")
    out = run_onnx(q["path"], data["x_te"])
    assert set(out) == set(OUTPUT_NAMES)
    assert np.all(np.isfinite(out["expected_orders"]))


def test_training_is_repeatable(data: dict[str, Any]) -> None:
    cfg = ModelConfig(cell="lstm", units=4, dense_units=0, batch_size=128, epochs=1, patience=1)
    runs = [
        train_model(data["x_tr"], data["y_tr"], data["x_val"], data["y_val"], cfg, progress=False)[
            0
        ].get_weights()
        for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def _save_graph(nodes: list[onnx.NodeProto], path: Path, extra_inits: list[Any] = ()) -> Path:  # type: ignore[assignment]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("sequence", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=list(extra_inits),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_check_recurrent_op_rejects_plain_and_loop_graphs(tmp_path: Path) -> None:
    plain = _save_graph([helper.make_node("Identity", ["sequence"], ["y"])], tmp_path / "p.onnx")
    with pytest.raises(ExportError, match="no LSTM/GRU"):
        check_recurrent_op(plain)

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    trip = helper.make_tensor("trip", TensorProto.INT64, [], [1])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    looped = _save_graph(
        [
            helper.make_node("Loop", ["trip", "cond"], [], body=body),
            helper.make_node("Identity", ["sequence"], ["y"]),
        ],
        tmp_path / "l.onnx",
        [trip, cond],
    )
    with pytest.raises(ExportError, match="not fused"):
        check_recurrent_op(looped)
    # sanity: the hand-made graphs are valid for onnxruntime
    ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
