"""iNNvestigate's presets and Deep Taylor on a Keras-style sequential CNN, against a float64 NumPy
implementation written from iNNvestigate's definitions (see models/ZENNIT_NOTES.md, section 8).

The network: Conv(3x3, pad 1)+ReLU -> MaxPool(2) -> Conv(3x3, stride 2)+ReLU -> Flatten -> Dense+ReLU ->
Dense.  The reference builds every layer as an explicit matrix (loops over the convolution's definition)
and applies the rules in matrix form:

* relevance starts at the selected logit's value (Deep Taylor: its positive part);
* ``safe_divide(a, b) = a / (b + 1e-7 [b == 0])``; epsilon rule ``z + eps (2 [z >= 0] - 1)``;
* alpha-beta (bias kept): activator ``(W+ x+ + b+) + (W- x- + b-)``, inhibitor ``(W- x+ + b-) +
  (W+ x- + b+)``; z+ in Deep Taylor = alpha1-beta0 without bias; flat: unit weights, no bias;
* ReLUs pass relevance through, max pooling routes it to each window's (first) maximum.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxplain
from reference import make_model, rel_err, rng, run


def _net(seed=0):
    r = rng(seed)
    p = {"w1": r.standard_normal((4, 2, 3, 3)) * 0.4, "b1": r.standard_normal(4) * 0.1,
         "w2": r.standard_normal((5, 4, 3, 3)) * 0.3, "b2": r.standard_normal(5) * 0.1,
         "w3": r.standard_normal((20, 8)) * 0.3, "b3": r.standard_normal(8) * 0.1,
         "w4": r.standard_normal((8, 4)) * 0.4, "b4": r.standard_normal(4) * 0.1}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], strides=[2, 2], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["d1"], name="dense1"),
             helper.make_node("Relu", ["d1"], ["r3"], name="relu3"),
             helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], name="dense2")]
    return make_model(nodes, [("x", ["N", 2, 10, 10])], [("logits", ["N", 4])], p), \
        {k: v.astype(np.float64) for k, v in p.items()}


def _conv_matrix(w, in_shape, stride, pad):
    """M [out, in] of a convolution, from its definition."""
    co, ci, kh, kw = w.shape
    _, h, wd = in_shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    m = np.zeros((co, oh, ow, ci, h, wd))
    for o in range(co):
        for y in range(oh):
            for x in range(ow):
                for c in range(ci):
                    for i in range(kh):
                        for j in range(kw):
                            yy, xx = y * stride - pad + i, x * stride - pad + j
                            if 0 <= yy < h and 0 <= xx < wd:
                                m[o, y, x, c, yy, xx] = w[o, c, i, j]
    return m.reshape(co * oh * ow, ci * h * wd), (co, oh, ow)


def _safe(a, b):
    return a / (b + 1e-7 * (b == 0))


def _alpha_beta(m, b, x, r, alpha, beta, bias=True):
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    mp, mn = np.maximum(m, 0), np.minimum(m, 0)
    bp, bn = (np.maximum(b, 0), np.minimum(b, 0)) if bias else (0 * b, 0 * b)

    def part(w1, b1, w2, b2):
        z = w1 @ xp + b1 + w2 @ xn + b2
        s = _safe(r, z)
        return xp * (w1.T @ s) + xn * (w2.T @ s)
    out = alpha * part(mp, bp, mn, bn)
    return out - beta * part(mn, bn, mp, bp) if beta else out


def _epsilon(m, b, x, r, eps):
    z = m @ x + b
    return x * (m.T @ (r / (z + eps * (2 * (z >= 0) - 1))))


def _flat(m, b, x, r):
    ones = (m != 0).astype(float)
    return ones.T @ _safe(r, ones @ np.ones_like(x))


def _forward(p, x):
    m1, s1 = _conv_matrix(p["w1"], (2, 10, 10), 1, 1)
    a1 = np.maximum(m1 @ x + np.repeat(p["b1"], s1[1] * s1[2]), 0).reshape(s1)
    pooled = a1.reshape(4, 5, 2, 5, 2).transpose(0, 1, 3, 2, 4).reshape(4, 5, 5, 4)
    arg = pooled.argmax(-1)
    p1 = pooled.max(-1).ravel()
    m2, s2 = _conv_matrix(p["w2"], (4, 5, 5), 2, 0)
    a2 = np.maximum(m2 @ p1 + np.repeat(p["b2"], s2[1] * s2[2]), 0)
    d1 = np.maximum(p["w3"].T @ a2 + p["b3"], 0)
    return (m1, s1, arg, p1, m2, s2, a2, d1), p["w4"].T @ d1 + p["b4"]


def _unpool(r_pooled, arg):
    out = np.zeros((4, 5, 5, 4))
    idx = np.indices(arg.shape)
    out[idx[0], idx[1], idx[2], arg] = r_pooled.reshape(4, 5, 5)
    return out.reshape(4, 5, 5, 2, 2).transpose(0, 1, 3, 2, 4).reshape(-1)


def reference(p, x, preset):
    """Float64 iNNvestigate relevance of one sample ``x`` [2, 10, 10] for its top logit."""
    (m1, s1, arg, p1, m2, s2, a2, d1), logits = _forward(p, x.ravel())
    t = int(logits.argmax())
    r = np.zeros(4)
    r[t] = max(logits[t], 0) if preset.startswith("deep_taylor") else logits[t]
    b1, b2 = np.repeat(p["b1"], s1[1] * s1[2]), np.repeat(p["b2"], s2[1] * s2[2])
    if preset.startswith("deep_taylor"):
        zplus = lambda m, b, xx, rr: _alpha_beta(m, b, xx, rr, 1.0, 0.0, bias=False)  # noqa: E731
        r = zplus(p["w4"].T, p["b4"], d1, r)
        r = zplus(p["w3"].T, p["b3"], a2, r)
        r = _unpool(zplus(m2, b2, p1, r), arg)
        return zplus(m1, b1, x.ravel(), r)
    conv = (1.0, 0.0) if "_a" in preset else (2.0, 1.0)
    r = _epsilon(p["w4"].T, p["b4"], d1, r, 0.1)
    r = _epsilon(p["w3"].T, p["b3"], a2, r, 0.1)
    r = _unpool(_alpha_beta(m2, b2, p1, r, *conv), arg)
    if preset.endswith("_flat"):
        return _flat(m1, b1, x.ravel(), r)
    return _alpha_beta(m1, b1, x.ravel(), r, *conv)


@pytest.mark.parametrize("preset", ["lrp.sequential_preset_a", "lrp.sequential_preset_b",
                                    "lrp.sequential_preset_a_flat", "lrp.sequential_preset_b_flat", "deep_taylor"])
def test_innvestigate_presets(preset):
    model, p = _net()
    x = rng(3).standard_normal((3, 2, 10, 10)).astype(np.float32)
    out = run(onnxplain.compile(model, preset), {"x": x})[f"{preset}/x"]
    expect = np.stack([reference(p, xi.astype(np.float64), preset).reshape(2, 10, 10) for xi in x])
    # float32 compiled vs float64 reference on a shallow net: ~1e-6; a wrong bias or rule gives O(1e-1)
    assert rel_err(out, expect) < 1e-5


def test_deep_taylor_conserves_the_positive_logit():
    model, _ = _net(seed=1)
    x = np.abs(rng(4).standard_normal((2, 2, 10, 10))).astype(np.float32)
    out = run(onnxplain.compile(model, "deep_taylor", health=True), {"x": x})
    np.testing.assert_allclose(out["deep_taylor/relevance_sum"], np.maximum(out["explained_value"], 0), rtol=1e-4)


def test_maxpool_proportional_option():
    """A rule spec can make max pooling redistribute in proportion to the window's inputs."""
    x = np.abs(rng(7).standard_normal((1, 1, 4, 4))).astype(np.float32)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w"], ["logits"], name="dense")]
    w = np.eye(4, dtype=np.float32)
    model = make_model(nodes, [("x", ["N", 1, 4, 4])], [("logits", ["N", 4])], {"w": w})
    spec = {"rules": [{"select": {"op": "MaxPool"}, "rule": "lrp.maxpool_proportional"},
                      {"select": {"linear": True}, "rule": "lrp.z"}]}
    out = run(onnxplain.compile(model, "lrp", rules=spec), {"x": x})["lrp/x"][0, 0]
    win = x[0, 0].reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
    t = win.max(1).argmax()
    expect = np.zeros((4, 4))
    expect[t] = win[t] / win[t].sum() * win[t].max()
    expect = expect.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4)
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-7)
    winner = run(onnxplain.compile(model, "lrp.z"), {"x": x})["lrp.z/x"][0, 0]
    assert np.count_nonzero(winner) == 1 and np.isclose(winner.sum(), win[t].max())
