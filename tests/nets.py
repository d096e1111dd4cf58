"""Small float32 test networks built directly as ONNX graphs (random weights, fixed seeds)."""
from __future__ import annotations

import numpy as np
from onnx import helper

from reference import make_model


def small_cnn(seed: int = 0, batch="N", classes: int = 5, softmax: bool = True):
    """Conv-Relu-MaxPool(overlapping)-Conv-Relu-AveragePool-Flatten-Gemm-Relu-Gemm(-Softmax), input [N,3,8,8]."""
    r = np.random.default_rng(seed)
    w = lambda *s: (r.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    inits = {"w1": w(4, 3, 3, 3), "b1": (0.1 * r.standard_normal(4)).astype(np.float32),
             "w2": w(6, 4, 3, 3), "b2": (0.1 * r.standard_normal(6)).astype(np.float32),
             "w3": w(12, 24), "b3": (0.1 * r.standard_normal(12)).astype(np.float32),
             "w4": w(classes, 12), "b4": (0.1 * r.standard_normal(classes)).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="pool2"),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu3"),
        helper.make_node("Gemm", ["hr", "w4", "b4"], ["logits"], transB=1, name="fc2"),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax"))
        out = "prob"
    return make_model(nodes, [("x", [batch, 3, 8, 8])], [(out, [batch, classes])], inits)


def mlp(seed: int = 0, sizes=(6, 8, 7, 4), bias: bool = True):
    """Gemm-Relu-...-Gemm on input [N, sizes[0]]; returns (model, list of (W [out,in], b))."""
    r = np.random.default_rng(seed)
    nodes, inits, layers, prev = [], {}, [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        wt = (r.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        bs = (0.1 * r.standard_normal(b)).astype(np.float32) if bias else np.zeros(b, np.float32)
        inits[f"w{i}"], inits[f"b{i}"] = wt, bs
        layers.append((wt, bs))
        last = i == len(sizes) - 2
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1, name=f"fc{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            out = f"a{i}"
        prev = out
    return make_model(nodes, [("x", ["N", sizes[0]])], [("logits", ["N", sizes[-1]])], inits), layers
