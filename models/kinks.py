"""Distance of a network's inputs to the kinks of its piecewise-linear parts, in float64.

Used by ``make_fixtures.py`` to pick test inputs on which float32 arithmetic (of any
implementation) takes the same branches as float64: every ReLU/Clip pre-activation is
away from its threshold and every max-pool window's winner is ahead of the runner-up by
at least ``margin`` times the layer's largest magnitude.  Such inputs test the
implementation, not luck.  Works on any exported ONNX file (ONNX's reference evaluator).
"""
from __future__ import annotations

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator


def _to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = TensorProto.DOUBLE
    del m.graph.value_info[:]
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


class KinkProbe:
    """Evaluate the inputs of every Relu, Clip and MaxPool node of an ONNX model in float64."""

    def __init__(self, path: str):
        model = _to_float64(onnx.load(path))
        self.nodes = [n for n in model.graph.node if n.op_type in ("Relu", "Clip", "MaxPool")]
        consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Constant":
                consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.consts = consts
        names = sorted({n.input[0] for n in self.nodes})
        for name in names:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, None))
        self.names = names
        self.ev = ReferenceEvaluator(model)
        self.input = model.graph.input[0].name

    def margin(self, x: np.ndarray) -> float:
        """The smallest relative distance to a kink over all nodes, for input ``x`` [1, ...]."""
        values = dict(zip(self.names, self.ev.run(self.names, {self.input: x.astype(np.float64)})))
        worst = np.inf
        for n in self.nodes:
            z = values[n.input[0]]
            scale = float(np.abs(z).max()) or 1.0
            worst = min(worst, self._node_margin(n, z) / scale)
        return worst

    def _node_margin(self, n, z: np.ndarray) -> float:
        if n.op_type == "Relu":
            return _min_nonzero(np.abs(z))
        if n.op_type == "Clip":
            bounds = [self.consts.get(i) for i in n.input[1:3] if i]
            return min(_min_nonzero(np.abs(z - b)) for b in bounds if b is not None)
        return _maxpool_gap(n, z)


def _maxpool_gap(n, z: np.ndarray) -> float:
    """Smallest gap between the two largest values of a window whose winner is positive."""
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    k, s = attrs["kernel_shape"], attrs.get("strides", [1, 1])
    p = attrs.get("pads", [0, 0, 0, 0])
    zp = np.pad(z, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])), constant_values=-np.inf)
    win = sliding_window_view(zp, k, axis=(2, 3))[:, :, ::s[0], ::s[1]]
    flat = win.reshape(win.shape[:4] + (-1,))
    top2 = -np.sort(-flat, axis=-1)[..., :2]
    gap = top2[..., 0] - top2[..., 1]
    return _min_nonzero(gap[top2[..., 0] > 0])


def _min_nonzero(d: np.ndarray) -> float:
    """The smallest non-zero distance: exact zeros (a pre-activation that is exactly the bias 0 of an
    all-zero input, an exact tie) come out exactly alike in float32 and float64, so they are no risk."""
    d = d[d > 0]
    return float(d.min()) if d.size else np.inf
