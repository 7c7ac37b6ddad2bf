"""Can the shipped graph score a sequence for less, with the same model? Two cuts, measured.

Owns one diagnostic for issue 16's processor row: ``python -m bench.model_cost [--model-dir
DIR] [--batches 64 128 322 512] [--seconds S]`` times ``session.run`` (one intra-op thread, as
the worker runs it) on the shipped graph and on two rewrites of it, side by side in one
process, and prints µs per sequence and the largest output difference:

* **one recurrent op for the seed ensemble** (:func:`merge_members`): the exported model
  averages three members whose LSTMs read the same input tensor (tf2onnx shares their
  transpose). They are one ONNX ``LSTM`` of ``3 H`` units whose input weights are the members'
  stacked gate by gate, whose recurrent weights are block-diagonal and whose output is sliced
  back per member: the same arithmetic, zeros aside, so the outputs are identical (tested in
  ``tests/bench/test_model_cost.py``), with one op instead of three;
* **dynamic int8** (ONNX Runtime's ``quantize_dynamic``, what ``train-and-export --quantize``
  writes): ``LSTM`` becomes ``DynamicQuantizeLSTM``, the dense ``MatMul``s integer ones.

Neither is shipped (``bench/results/profile.md``, 2026-12-08): the merged op is slower, since
its recurrent product does three times the multiply-adds of three separate ones and ONNX
Runtime's cost here is arithmetic, not per-op overhead; int8 saves a few per cent and moves
the outputs by per cents. Needs the ``[train]`` extra (``onnx``); the worker never imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.inference import time_calls

log = logging.getLogger("bench.model_cost")

REPO = Path(__file__).resolve().parent.parent
GATES = 4
"""An ONNX ``LSTM``'s gates (i, o, f, c), stacked along the weights' first axis."""


def _attribute(node: Any, name: str) -> Any:
    from onnx import helper

    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _text(value: Any) -> Any:
    """An attribute value as ``make_node`` takes it: ONNX hands strings back as bytes."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def merge_members(model: Any) -> Any:
    """``model`` (an ``onnx.ModelProto``) with its ``LSTM`` nodes that read one input tensor
    replaced by one ``LSTM`` of their summed hidden size and a ``Slice`` of its ``Y`` per
    member. Refuses graphs it was not written for: members with different inputs, hidden
    sizes or initial states, or a consumer of ``Y_h`` / ``Y_c`` (ours read ``Y`` only)."""
    import onnx
    from onnx import helper, numpy_helper

    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    graph = merged.graph
    members = [n for n in graph.node if n.op_type == "LSTM"]
    if len(members) < 2:
        raise ValueError(f"{len(members)} LSTM node(s): nothing to merge")
    if len({(n.input[0], n.input[5], n.input[6]) for n in members}) != 1:
        raise ValueError("the LSTM nodes read different inputs or initial states")
    hidden = {int(_attribute(n, "hidden_size")) for n in members}
    if len(hidden) != 1:
        raise ValueError(f"the LSTM nodes have different hidden sizes: {sorted(hidden)}")
    h = hidden.pop()
    states = {o for n in members for o in n.output[1:]}
    if any(i in states for n in graph.node for i in n.input):
        raise ValueError("a node reads an LSTM's Y_h or Y_c")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    k = len(members)
    size = h * k
    n_in = inits[members[0].input[1]].shape[2]
    w = np.zeros((1, GATES * size, n_in), np.float32)
    r = np.zeros((1, GATES * size, size), np.float32)
    b = np.zeros((1, 2 * GATES * size), np.float32)
    for j, node in enumerate(members):
        w_j, r_j, b_j = (inits[name][0] for name in node.input[1:4])
        for gate in range(GATES):
            rows = slice(gate * size + j * h, gate * size + (j + 1) * h)
            src = slice(gate * h, (gate + 1) * h)
            w[0, rows] = w_j[src]
            r[0, rows, j * h : (j + 1) * h] = r_j[src]
            b[0, rows] = b_j[src]  # input bias Wb
            b[0, GATES * size + gate * size + j * h : GATES * size + gate * size + (j + 1) * h] = (
                b_j[GATES * h + gate * h : GATES * h + (gate + 1) * h]  # recurrent bias Rb
            )
    first = members[0]
    consts = {"merged_W": w, "merged_R": r, "merged_B": b, "merged_axis": np.array([3])}
    for j in range(k):
        consts[f"merged_from_{j}"] = np.array([j * h])
        consts[f"merged_to_{j}"] = np.array([(j + 1) * h])
    graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items())
    state = first.input[5]
    new_nodes = []
    if state:
        new_nodes.append(helper.make_node("Concat", [state] * k, ["merged_state"], axis=2))
    attrs = {a.name: _text(helper.get_attribute_value(a)) for a in first.attribute}
    attrs["hidden_size"] = size
    merged_state = "merged_state" if state else ""
    new_nodes.append(
        helper.make_node(
            "LSTM",
            [first.input[0], "merged_W", "merged_R", "merged_B", "", merged_state, merged_state],
            ["merged_Y"],
            **attrs,
        )
    )
    new_nodes.extend(
        helper.make_node(
            "Slice",
            ["merged_Y", f"merged_from_{j}", f"merged_to_{j}", "merged_axis"],
            [node.output[0]],
        )
        for j, node in enumerate(members)
    )
    nodes = list(graph.node)
    at = nodes.index(first)
    rest = [n for n in nodes if n.op_type != "LSTM"]
    before = [n for n in nodes[:at] if n.op_type != "LSTM"]
    ordered = before + new_nodes + rest[len(before) :]
    del graph.node[:]
    graph.node.extend(ordered)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(merged)
    return merged


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the worker: one process per core
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: Any, batch: int, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [batch if not isinstance(d, int) else d for d in i.shape]
        feeds[i.name] = rng.standard_normal(shape, np.float32)
    return feeds


def _us_per_sequence(session: Any, feeds: dict[str, Any], batch: int, seconds: float) -> float:
    times = time_calls(lambda: session.run(None, feeds), seconds)
    return float(np.median(times)) / batch * 1e6


def run(model_dir: Path, batches: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """One row per batch size: µs per sequence for each graph, and each rewrite's largest
    absolute and relative output difference from the shipped graph."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shipped = model_dir / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        merged_path = Path(tmp) / "merged.onnx"
        onnx.save(merge_members(onnx.load(str(shipped))), str(merged_path))
        int8_path = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(shipped), str(int8_path), weight_type=QuantType.QInt8)
        sessions = {
            "shipped": _session(shipped),
            "one_op": _session(merged_path),
            "int8": _session(int8_path),
        }
        rows = []
        for batch in batches:
            feeds = _feeds(sessions["shipped"], batch)
            base = sessions["shipped"].run(None, feeds)
            row: dict[str, Any] = {"batch": batch}
            # Alternated twice so the machine's drift falls on every graph alike.
            for name in [*sessions, *sessions]:
                us = _us_per_sequence(sessions[name], feeds, batch, seconds / 2)
                row[f"{name}_us"] = row.get(f"{name}_us", 0.0) + us / 2
            for name in ("one_op", "int8"):
                out = sessions[name].run(None, feeds)
                row[f"{name}_abs_diff"] = max(
                    float(np.max(np.abs(a - b))) for a, b in zip(base, out, strict=True)
                )
                row[f"{name}_rel_diff"] = max(
                    float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-3)))
                    for a, b in zip(base, out, strict=True)
                )
            rows.append(row)
    return rows


def render(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| sequences per call | shipped µs/seq | one LSTM op µs/seq (× shipped) | max abs diff "
        "| int8 µs/seq (× shipped) | max rel diff |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = r["shipped_us"]
        lines.append(
            f"| {r['batch']} | {s:.1f} | {r['one_op_us']:.1f} ({r['one_op_us'] / s:.2f}) "
            f"| {r['one_op_abs_diff']:.1e} | {r['int8_us']:.1f} ({r['int8_us'] / s:.2f}) "
            f"| {100 * r['int8_rel_diff']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.model_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model-dir", type=Path, default=REPO / "onnx_models" / "default")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 128, 322, 512])
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per graph and size")
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("model %s", a.model_dir)
    sys.stdout.write(render(run(a.model_dir, a.batches, a.seconds)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
