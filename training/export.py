"""Export the trained Keras model to ONNX for the onnxruntime worker, and check the export.

How the export works
--------------------
A ``tf.function`` serving graph with one input ``sequence`` ``[batch, seq_len, F]`` float32
is converted with ``tf2onnx.convert.from_function``. It applies the model's own layers
(``recurrent`` → ``trunk`` → heads; dropout is the identity at inference) and bakes in the
output transforms, so the ONNX outputs are, in this order, each float32 of shape ``[batch]``:

* ``expected_orders``   — softplus head (expected order count over the horizon),
* ``expected_spend``    — ``max(exp(h) - 1, 0)`` of the log1p(spend) head,
* ``churn_probability`` — sigmoid head.

tf2onnx 1.17 fuses the recurrent while-loop into one ONNX ``LSTM``/``GRU`` op only when the
TF graph has the exact cell pattern its rewriters know:

* Keras 3 ``LSTM`` — its TF while-loop matches the tf2 LSTM rewriter: the layer is used as is.
* Keras 3 ``GRU`` — does *not* match (Keras 3 slices the gate matrices where tf.keras 2 used
  ``Split`` + ``BiasAdd``), so it would become an ONNX ``Loop``. The serving graph therefore
  re-expresses the trained GRU (``reset_after=True``) with its own weights as a
  ``tf.while_loop`` in the tf.keras-2 form (:func:`_fusable_gru`), which tf2onnx fuses into a
  ``GRU`` op with ``linear_before_reset=1``. :func:`verify_against_keras` checks the result
  against ``model.predict``.

:func:`check_recurrent_op` refuses a graph without an ``LSTM``/``GRU`` node or with any
``Loop``/``Scan``. TensorFlow is imported lazily: checking, verifying an existing file with
onnxruntime, quantising and hashing need only onnx/onnxruntime (plus Keras for verifying).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from features.manifest import INPUT_NAME, OUTPUT_NAMES, SUMMARY_INPUT_NAME
from serving.scorer import sha256_file

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
RECURRENT_OPS = frozenset({"LSTM", "GRU"})
LOOP_OPS = frozenset({"Loop", "Scan"})
MIN_OPSET = 15


class ExportError(RuntimeError):
    """The ONNX export is missing, malformed, not fused, or does not match Keras."""


@dataclass(frozen=True)
class ExportInfo:
    """What was written: enough for a manifest and for the worker to check its model."""

    path: str
    sha256: str
    size_bytes: int
    opset: int
    cell: str
    recurrent_op: str
    input_name: str
    #: ``["batch", seq_len, n_features]``
    input_shape: list[str | int]
    output_names: list[str]
    #: Every output is ``[batch]`` float32.
    output_shape: list[str]
    seq_len: int
    n_features: int
    node_counts: dict[str, int]
    convert_seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Nodes of a graph and of every subgraph (Loop/If/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def _node_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in _all_nodes(model.graph)).items()))


def check_recurrent_op(path: str | Path, members: int = 1) -> str:
    """Return ``"LSTM"``/``"GRU"`` if the model has ``members`` fused recurrent ops of one kind
    (one per seed-averaged member) and no loops.

    Raises :class:`ExportError` when there is no ``LSTM``/``GRU`` node, another count, any
    ``Loop``/``Scan`` node (at any depth), or a default-domain opset below 15.
    """
    model = onnx.load(str(path))
    counts = _node_counts(model)
    loops = {op: n for op, n in counts.items() if op in LOOP_OPS}
    if loops:
        raise ExportError(f"{path}: recurrent layer was not fused, graph has {loops}")
    rec = {op: n for op, n in counts.items() if op in RECURRENT_OPS}
    if not rec:
        raise ExportError(f"{path}: no LSTM/GRU node; ops are {counts}")
    if len(rec) != 1 or next(iter(rec.values())) != members:
        raise ExportError(f"{path}: expected {members} recurrent node(s), found {rec}")
    opset = _default_opset(model)
    if opset < MIN_OPSET:
        raise ExportError(f"{path}: opset {opset} < {MIN_OPSET}")
    return next(iter(rec))


def _recurrent_layers(model: keras.Model) -> list[Any]:
    """The recurrent layer(s): the model's own, or each member's in a seed average."""
    from training.model import RECURRENT_LAYER

    names = {layer.name for layer in model.layers}
    if RECURRENT_LAYER in names:
        return [model.get_layer(RECURRENT_LAYER)]
    found = [
        layer.get_layer(RECURRENT_LAYER)
        for layer in model.layers
        if hasattr(layer, "get_layer") and RECURRENT_LAYER in {x.name for x in layer.layers}
    ]
    if not found:
        raise ExportError(f"model has no {RECURRENT_LAYER!r} layer")
    return found


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ExportError("model has no default-domain opset import")


def _check_layer_config(layer: keras.layers.Layer, cell: str) -> None:
    cfg = layer.get_config()
    wanted: dict[str, Any] = {
        "activation": "tanh",
        "recurrent_activation": "sigmoid",
        "use_bias": True,
        "return_sequences": False,
        "return_state": False,
        "go_backwards": False,
        "stateful": False,
        "unroll": False,
    }
    if cell == "gru":
        wanted["reset_after"] = True
    bad = {k: cfg.get(k) for k, v in wanted.items() if k in cfg and cfg[k] != v}
    if bad:
        raise ExportError(
            f"recurrent layer config {bad} is not exportable as one ONNX {cell.upper()} op "
            f"(need {wanted})"
        )


def _fusable_gru(weights: list[npt.NDArray[np.float32]], x: Any) -> Any:
    """Last hidden state of a Keras 3 GRU (reset_after=True), as a TF graph tf2onnx fuses.

    Same arithmetic as ``keras.layers.GRUCell`` (gates z, r, h; ``h = z*h + (1-z)*hh``)
    written with ``Split``/``BiasAdd`` inside a ``tf.while_loop`` over a ``TensorArray`` —
    the tf.keras-2 pattern of tf2onnx's ``keras_gru_pattern``.
    """
    import tensorflow as tf

    kernel_np, rkernel_np, bias_np = (np.asarray(w, np.float32) for w in weights)
    if bias_np.ndim != 2:
        raise ExportError("GRU bias must be [2, 3*units] (reset_after=True)")
    units = rkernel_np.shape[0]
    kernel = tf.constant(kernel_np)
    rkernel = tf.constant(rkernel_np)
    b_in = tf.constant(bias_np[0])
    b_rec = tf.constant(bias_np[1])

    xt = tf.transpose(x, [1, 0, 2])
    steps = tf.shape(xt)[0]
    ta_x = tf.TensorArray(tf.float32, size=steps).unstack(xt)
    ta_out = tf.TensorArray(tf.float32, size=steps)
    h0 = tf.zeros(tf.stack([tf.shape(x)[0], units]), tf.float32)

    def body(t: Any, h: Any, out: Any) -> tuple[Any, Any, Any]:
        x_t = ta_x.read(t)
        x_z, x_r, x_h = tf.split(tf.nn.bias_add(tf.matmul(x_t, kernel), b_in), 3, axis=-1)
        r_z, r_r, r_h = tf.split(tf.nn.bias_add(tf.matmul(h, rkernel), b_rec), 3, axis=-1)
        z = tf.sigmoid(x_z + r_z)
        r = tf.sigmoid(x_r + r_r)
        hh = tf.tanh(x_h + r * r_h)
        h_new = z * h + (1.0 - z) * hh
        return t + 1, h_new, out.write(t, h_new)

    _, _, ta_out = tf.while_loop(
        lambda t, *_: t < steps, body, (tf.constant(0), h0, ta_out), parallel_iterations=1
    )
    return ta_out.stack()[-1]


def _serving_function(model: keras.Model, cell: str, seq_len: int, n_features: int) -> Any:
    import tensorflow as tf

    from training.model import RECURRENT_LAYER, TARGETS, TRUNK_LAYER

    recurrent = model.get_layer(RECURRENT_LAYER)
    # Read outside the traced function (variables have no .numpy() while tracing).
    gru_weights = [np.asarray(w, np.float32) for w in recurrent.get_weights()]
    layer_names = {layer.name for layer in model.layers}
    trunk = model.get_layer(TRUNK_LAYER) if TRUNK_LAYER in layer_names else None
    missing = [t for t in TARGETS if t not in layer_names]
    if missing:
        raise ExportError(f"model has no head layer(s) {missing}")
    heads = {t: model.get_layer(t) for t in TARGETS}
    spec = (tf.TensorSpec([None, seq_len, n_features], tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=spec, autograph=False)  # type: ignore[untyped-decorator]
    def serve(sequence: Any) -> dict[str, Any]:
        if cell == "gru":
            h = _fusable_gru(gru_weights, sequence)
        else:
            h = recurrent(sequence, training=False)
        if trunk is not None:
            h = trunk(h)
        orders = tf.reshape(heads["orders"](h), [-1])
        log_spend = tf.reshape(heads["spend"](h), [-1])
        churn = tf.reshape(heads["churn"](h), [-1])
        # ONNX has no Expm1: exp(x) - 1 differs from expm1 by < 1e-7 absolute.
        spend = tf.maximum(tf.exp(log_spend) - 1.0, 0.0)
        return {
            "expected_orders": tf.identity(orders),
            "expected_spend": tf.identity(spend),
            "churn_probability": tf.identity(churn),
        }

    return serve


def _residual_serving_function(model: keras.Model, value_scale: float) -> Any:
    """Serving graph of :func:`training.model.build_residual_model`: the model itself (LSTM
    only: Keras 3's LSTM fuses as is), per-window outputs summed over the horizon, spend
    scaled back to the data's currency."""
    import tensorflow as tf

    from features.summary import N_SUMMARY

    _, seq_len, n_features = model.inputs[0].shape
    spec = (
        tf.TensorSpec([None, seq_len, n_features], tf.float32, name=INPUT_NAME),
        tf.TensorSpec([None, N_SUMMARY], tf.float32, name=SUMMARY_INPUT_NAME),
    )

    @tf.function(input_signature=spec, autograph=False)  # type: ignore[untyped-decorator]
    def serve(sequence: Any, summary: Any) -> dict[str, Any]:
        out = model({INPUT_NAME: sequence, SUMMARY_INPUT_NAME: summary}, training=False)
        orders = tf.reduce_sum(out["orders"], axis=1)
        spend = tf.reduce_sum(out["spend"], axis=1) * tf.constant(value_scale, tf.float32)
        churn = tf.reshape(out["churn"], [-1])
        return {
            "expected_orders": tf.identity(orders),
            "expected_spend": tf.identity(spend),
            "churn_probability": tf.identity(churn),
        }

    return serve


def _finish_graph(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Outputs in contract order, a named dynamic batch dim, metadata props."""
    graph = proto.graph
    by_name = {o.name: o for o in graph.output}
    if set(by_name) != set(OUTPUT_NAMES):
        raise ExportError(f"converted outputs are {sorted(by_name)}, want {list(OUTPUT_NAMES)}")
    ordered = [onnx.ValueInfoProto.FromString(by_name[n].SerializeToString()) for n in OUTPUT_NAMES]
    del graph.output[:]
    graph.output.extend(ordered)
    for value in [*graph.input, *graph.output]:
        dim0 = value.type.tensor_type.shape.dim[0]
        dim0.ClearField("dim_value")
        dim0.dim_param = BATCH_DIM
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)


def export_onnx(
    model: keras.Model,
    path: str | Path,
    opset: int = 17,
    metadata: dict[str, str] | None = None,
    value_scale: float | None = None,
) -> ExportInfo:
    """Convert ``model`` to ONNX at ``path`` and check that the recurrent op is fused.

    ``metadata`` entries are added to the model's ``metadata_props`` (besides ``cell``,
    ``seq_len``, ``n_features``, ``outputs``, ``spend_transform``).
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} < {MIN_OPSET}")
    _, seq_len, n_features = model.inputs[0].shape
    if seq_len is None or n_features is None:
        raise ExportError("model input must have fixed seq_len and n_features")
    recurrent = _recurrent_layers(model)[0]
    if isinstance(recurrent, keras.layers.LSTM):
        cell = "lstm"
    elif isinstance(recurrent, keras.layers.GRU):
        cell = "gru"
    else:
        raise ExportError(f"unsupported recurrent layer {type(recurrent).__name__}")
    for layer in _recurrent_layers(model):
        _check_layer_config(layer, cell)

    if len(model.inputs) == 2:
        if cell != "lstm" or value_scale is None:
            raise ExportError("the residual model exports as LSTM with a value scale only")
        serve = _residual_serving_function(model, value_scale)
    else:
        serve = _serving_function(model, cell, int(seq_len), int(n_features))
    t0 = time.perf_counter()
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=opset
    )
    convert_seconds = time.perf_counter() - t0
    props = {
        "cell": cell,
        "seq_len": str(seq_len),
        "n_features": str(n_features),
        "outputs": ",".join(OUTPUT_NAMES),
        "spend_transform": "max(exp(log1p_head) - 1, 0)",
        **(metadata or {}),
    }
    _finish_graph(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"converted model fails onnx.checker: {exc}") from exc
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    rec_op = check_recurrent_op(path, members=len(_recurrent_layers(model)))
    info = ExportInfo(
        path=str(path),
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        opset=opset,
        cell=cell,
        recurrent_op=rec_op,
        input_name=INPUT_NAME,
        input_shape=[BATCH_DIM, int(seq_len), int(n_features)],
        output_names=list(OUTPUT_NAMES),
        output_shape=[BATCH_DIM],
        seq_len=int(seq_len),
        n_features=int(n_features),
        node_counts=_node_counts(proto),
        convert_seconds=round(convert_seconds, 3),
        versions={
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
    )
    log.info(
        "exported %s (%s op, opset %d, %d bytes) in %.1fs",
        path,
        rec_op,
        opset,
        info.size_bytes,
        convert_seconds,
    )
    return info


def run_onnx(
    path: str | Path, X: npt.ArrayLike | dict[str, npt.ArrayLike], batch_size: int = 8192
) -> dict[str, npt.NDArray[np.float32]]:
    """Run the exported model on ``X`` (the sequence, or every input by name) with
    onnxruntime (CPU, 2 threads), in batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = (
        {k: np.asarray(v, dtype=np.float32) for k, v in X.items()}
        if isinstance(X, dict)
        else {INPUT_NAME: np.asarray(X, dtype=np.float32)}
    )
    n = len(feeds[INPUT_NAME])
    names = [o.name for o in sess.get_outputs()]
    parts: dict[str, list[npt.NDArray[np.float32]]] = {n: [] for n in names}
    for start in range(0, n, batch_size):
        outs = sess.run(names, {k: v[start : start + batch_size] for k, v in feeds.items()})
        for name, value in zip(names, outs, strict=True):
            parts[name].append(np.asarray(value, dtype=np.float32).reshape(-1))
    return {n: np.concatenate(v) if v else np.zeros(0, np.float32) for n, v in parts.items()}


def verify_against_keras(
    path: str | Path,
    model: keras.Model,
    X: npt.ArrayLike | dict[str, npt.ArrayLike],
    atol: float = 1e-4,
    rtol: float = 1e-5,
    value_scale: float | None = None,
) -> dict[str, float]:
    """Max absolute ONNX-vs-Keras difference per output on ``X``; raise if out of tolerance.

    An element fails when ``|onnx - keras| > atol + rtol * |keras|`` (``np.allclose``
    semantics). The ``rtol`` term is for ``expected_spend``, whose float32 values can be in
    the thousands where one ulp alone exceeds 1e-4; orders and churn are small enough that
    it adds ~1e-5 at most.
    """
    from training.model import predict, predict_residual

    if isinstance(X, dict):
        ref = predict_residual(model, X, value_scale if value_scale is not None else 1.0)
        rows = len(next(iter(X.values())))  # type: ignore[arg-type]
    else:
        ref = predict(model, np.asarray(X, dtype=np.float32))
        rows = len(ref["expected_orders"])
    got = run_onnx(path, X)
    diffs: dict[str, float] = {}
    failures: list[str] = []
    for name in OUTPUT_NAMES:
        if name not in got:
            raise ExportError(f"ONNX model has no output {name!r}")
        a, b = got[name], ref[name]
        if a.shape != b.shape:
            raise ExportError(f"{name}: ONNX shape {a.shape} != Keras shape {b.shape}")
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        diffs[name] = float(d.max()) if d.size else 0.0
        bad = d > atol + rtol * np.abs(b.astype(np.float64))
        if np.any(~np.isfinite(a)) or np.any(bad):
            failures.append(f"{name}: max |diff| {diffs[name]:.3g} ({int(bad.sum())} over tol)")
    log.info(
        "ONNX vs Keras on %d rows: %s",
        rows,
        ", ".join(f"{k}={v:.2e}" for k, v in diffs.items()),
    )
    if failures:
        raise ExportError(
            f"ONNX output differs from Keras (atol={atol}, rtol={rtol}): " + "; ".join(failures)
        )
    return diffs


def quantize_dynamic_int8(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Dynamic int8 weight quantisation with onnxruntime (optional serving variant).

    Returns node counts, sizes and whether the recurrent op itself was quantised
    (ORT turns ``LSTM`` into ``com.microsoft.DynamicQuantizeLSTM``; it has no quantised
    GRU, which stays float). Accuracy is not checked here: compare with :func:`run_onnx`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    counts = _node_counts(onnx.load(str(dst)))
    result = {
        "path": str(dst),
        "sha256": sha256_file(dst),
        "size_bytes": dst.stat().st_size,
        "src_size_bytes": src.stat().st_size,
        "node_counts": counts,
        "recurrent_quantized": "DynamicQuantizeLSTM" in counts,
    }
    log.info(
        "quantized %s -> %s (%d -> %d bytes, recurrent op quantized: %s)",
        src,
        dst,
        result["src_size_bytes"],
        result["size_bytes"],
        result["recurrent_quantized"],
    )
    return result
