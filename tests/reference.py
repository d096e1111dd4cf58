"""Independent references for the tests: float64 finite differences on ONNX's reference evaluator.

The compiled graph runs in ONNX Runtime in float32; the reference runs the
*original* model converted to float64 in ``onnx.reference.ReferenceEvaluator``
(a NumPy implementation of the ONNX spec, independent of ONNX Runtime) and
differentiates it by central differences.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

RNG_SEED = 1234


def make_model(nodes, inputs, outputs, inits=(), opset=18) -> onnx.ModelProto:
    """A model from nodes; ``inputs``/``outputs`` are (name, shape) pairs (float32) or ValueInfoProtos."""
    def vi(x):
        if isinstance(x, onnx.ValueInfoProto):
            return x
        return helper.make_tensor_value_info(x[0], TensorProto.FLOAT, x[1])
    inits = [numpy_helper.from_array(np.asarray(v), k) if not isinstance(v, onnx.TensorProto) else v
             for k, v in (inits.items() if isinstance(inits, dict) else inits)]
    g = helper.make_graph(nodes, "test", [vi(i) for i in inputs], [vi(o) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float32 initializer, constant, input, output and cast in float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


class Reference:
    """Float64 evaluation of a model's output ``output`` with ONNX's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, output: str | None = None):
        self.model64 = to_float64(model)
        self.output = output or model.graph.output[0].name
        self.ev = ReferenceEvaluator(self.model64)

    def __call__(self, feeds: dict) -> np.ndarray:
        feeds = {k: np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v for k, v in feeds.items()}
        return self.ev.run([self.output], feeds)[0]

    def logit_gradient(self, x: np.ndarray, target, name: str = "x", h: float = 1e-5, other=None) -> np.ndarray:
        """Central differences of ``out[n, target[n]]`` (flattened per sample) w.r.t. input ``name``."""
        x = np.asarray(x, np.float64)
        grad = np.zeros_like(x)
        d = x[0].size
        eye = np.eye(d).reshape((d,) + x.shape[1:]) * h
        for n in range(x.shape[0]):
            batch = np.concatenate([x[n][None] + eye, x[n][None] - eye])
            feeds = {name: batch}
            for k, v in (other or {}).items():
                feeds[k] = np.repeat(np.asarray(v)[n:n + 1], 2 * d, axis=0)
            out = self(feeds).reshape(2 * d, -1)[:, target[n]]
            grad[n] = ((out[:d] - out[d:]) / (2 * h)).reshape(x.shape[1:])
        return grad

    def top(self, feeds: dict) -> np.ndarray:
        return self(feeds).reshape(len(next(iter(feeds.values()))), -1).argmax(1)


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    """Run ``model`` in ONNX Runtime (CPU); return outputs by name."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def rel_err(a, b) -> float:
    """Relative L2 error ``||a - b|| / ||b||``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)
