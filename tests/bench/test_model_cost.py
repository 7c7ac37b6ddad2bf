"""``bench.model_cost``: the seed ensemble's LSTMs merged into one op, on the shipped model
(Online Retail's, three members of 32 units): the rewrite must be the same model, or its timing
says nothing about the shipped graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench.model_cost import merge_members

SHIPPED = Path(__file__).resolve().parents[2] / "onnx_models" / "default" / "model.onnx"


def _run(model: onnx.ModelProto, batch: int) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    feeds = {
        i.name: rng.standard_normal(
            [batch if not isinstance(d, int) else d for d in i.shape], np.float32
        )
        for i in session.get_inputs()
    }
    return list(session.run(None, feeds))


def _hidden(node: onnx.NodeProto) -> int:
    return int(next(a.i for a in node.attribute if a.name == "hidden_size"))


def test_one_recurrent_op_scores_the_shipped_ensemble_exactly() -> None:
    shipped = onnx.load(str(SHIPPED))
    members = [n for n in shipped.graph.node if n.op_type == "LSTM"]
    merged = merge_members(shipped)
    lstms = [n for n in merged.graph.node if n.op_type == "LSTM"]
    assert len(members) > 1 and len(lstms) == 1
    assert _hidden(lstms[0]) == sum(_hidden(n) for n in members)
    for batch in (1, 37):
        for a, b in zip(_run(shipped, batch), _run(merged, batch), strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_graph_with_one_recurrent_op_is_refused() -> None:
    merged = merge_members(onnx.load(str(SHIPPED)))
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_members(merged)
