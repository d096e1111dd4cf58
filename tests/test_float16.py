"""Float16 compilation (``precision="float16"``, ``onnxplain.compiler.precision``).

ONNX Runtime's CPU provider runs float16 graphs by computing each node from float16 inputs and rounding
its output to float16 (natively or through its inserted casts). The references are therefore:

* an MLP gradient written in NumPy with float16 rounding at the same points as the converted graph
  (every node output that is float16 in the graph, float32/float64 arithmetic inside a node);
* float64 references of the methods (as in test_methods.py / test_lrp_rules.py), with a tolerance for
  float16 arithmetic: unit roundoff 2^-11 = 4.9e-4 per operation, a handful of layers here, so 1e-2
  relative; a wrong rule, weight or sign errs by O(1).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import onnxplain
from nets import mlp, small_cnn
from onnxplain.compiler.errors import CompileError
from onnxplain.compiler.precision import to_float16
from reference import Reference, make_model, rel_err, rng, run

TOL16 = 1e-2


def r16(a):
    return np.asarray(a, np.float64).astype(np.float16).astype(np.float64)


@pytest.fixture(scope="module")
def cnn():
    return small_cnn(softmax=False)


@pytest.fixture(scope="module")
def x():
    return rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)


def _interface(model):
    return ([(i.name, i.type.tensor_type.elem_type) for i in model.graph.input],
            [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output])


def test_mlp_gradient_matches_float16_rounding_reference():
    model, layers = mlp(seed=2, sizes=(6, 8, 7, 4))
    m16 = onnxplain.compile(model, "gradient", precision="float16")
    x = rng(4).standard_normal((5, 6)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 1])
    out = run(m16, {"x": x, "target": target})
    # forward with float16 storage between nodes
    acts, signs, a = [], [], r16(x)
    for i, (w, b) in enumerate(layers):
        z = r16(a @ r16(w).T + r16(b))
        if i < len(layers) - 1:
            signs.append(np.sign(z) * (z > 0))
            a = np.maximum(z, 0)
        acts.append(z)
    # ONNX Runtime's float16 Gemm (MLAS) rounds inside its accumulation, in an order not modelled here: each
    # Gemm output may differ from the fused-rounding emulation by up to K u sum|a w| (K <= 8, u = 2^-11)
    tol = 8 * 2.0 ** -11
    np.testing.assert_allclose(out["logits"], acts[-1], rtol=0, atol=tol * np.abs(acts[-1]).max())
    g = np.eye(4)[target]
    for i in range(len(layers) - 1, -1, -1):
        g = r16(g @ r16(layers[i][0]))
        if i > 0:
            g = g * signs[i - 1]
    assert out["gradient/x"].dtype == np.float32
    np.testing.assert_allclose(out["gradient/x"], g, rtol=0, atol=tol * np.abs(g).max())
    # and it is a float16 result, not float32 in disguise: the exact gradient differs by ~1e-3
    exact = np.eye(4)[target]
    for i in range(len(layers) - 1, -1, -1):
        exact = exact @ layers[i][0].astype(np.float64)
        if i > 0:
            z = x.astype(np.float64)
            for w, b in layers[:i]:
                z = np.maximum(z @ w.T.astype(np.float64) + b, 0)
            exact = exact * (z > 0)
    assert 1e-5 < rel_err(out["gradient/x"], exact) < TOL16


def test_interface_float32_weights_float16_checker(cnn):
    m16 = onnxplain.compile(cnn, ["gradient", "lrp.epsilon_plus_flat"], precision="float16")
    m32 = onnxplain.compile(cnn, ["gradient", "lrp.epsilon_plus_flat"])
    assert _interface(m16) == _interface(m32)
    assert 8 <= m16.ir_version <= 10
    onnx.checker.check_model(m16, full_check=True)
    inits = {t.name: t.data_type for t in m16.graph.initializer}
    assert inits["w1"] == inits["w2"] == inits["w3"] == TensorProto.FLOAT16
    assert {p.key: p.value for p in m16.metadata_props}["onnxplain.precision"] == "float16"
    assert {n.domain for n in m16.graph.node} <= {""}


def test_lrp_stabilizer_stays_float32(cnn):
    """Every Div reads float32 operands; the epsilon constants of the stabilisers keep their float32 value."""
    m16 = onnxplain.compile(cnn, "lrp.epsilon", epsilon=1e-6, precision="float16")
    inferred = onnx.shape_inference.infer_shapes(m16)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({t.name: t.data_type for t in m16.graph.initializer})
    divs = [n for n in m16.graph.node if n.op_type == "Div"]
    assert divs
    for n in divs:
        assert [types[i] for i in n.input] == [TensorProto.FLOAT, TensorProto.FLOAT], n.name
    eps = [numpy_helper.to_array(t) for t in m16.graph.initializer
           if t.data_type == TensorProto.FLOAT and numpy_helper.to_array(t).size == 1]
    assert any(float(v) == np.float32(1e-6) for v in eps)


@pytest.mark.parametrize("method,params", [
    ("gradient", {}), ("guided_backprop", {}), ("lrp.epsilon", {}), ("lrp.epsilon_plus_flat", {}),
    ("lrp.epsilon_gamma_box", {"low": -3.0, "high": 3.0}), ("deep_taylor", {})])
def test_float16_close_to_float32(cnn, x, method, params):
    """Float32 compiled maps are tested against float64 elsewhere; float16 stays within float16 accuracy of them."""
    ref = Reference(cnn)
    target = ref.top({"x": x})
    m32 = onnxplain.compile(cnn, method, **params)
    m16 = onnxplain.compile(cnn, method, precision="float16", **params)
    a = run(m32, {"x": x, "target": target})[f"{method}/x"]
    b = run(m16, {"x": x, "target": target})[f"{method}/x"]
    assert b.dtype == np.float32
    assert rel_err(b, a) < TOL16
    assert rel_err(b, a) > 0  # really computed in float16


def test_integrated_gradients_float16_vs_float64(cnn, x):
    """IG's Loop: float16 body, float32 accumulator; against float64 central differences."""
    ref = Reference(cnn)
    x = x[:2]
    target = ref.top({"x": x})
    m16 = onnxplain.compile(cnn, "integrated_gradients", steps=2, chunk=1, precision="float16")
    loop = next(n for n in m16.graph.node if n.op_type == "Loop")
    body = loop.attribute[0].g
    assert body.input[2].type.tensor_type.elem_type == TensorProto.FLOAT  # accumulator float32
    assert any(n.op_type == "Cast" for n in body.node)
    out = run(m16, {"x": x, "target": target})["integrated_gradients/x"]
    x64 = x.astype(np.float64)
    expect = sum(ref.logit_gradient(a * x64, target) for a in (0.5, 1.0)) / 2 * x64
    assert rel_err(out, expect) < TOL16


def test_smoothgrad_float16_keeps_float32_noise(cnn, x):
    m32 = onnxplain.compile(cnn, "smoothgrad", samples=4, chunk=2, seed=3)
    m16 = onnxplain.compile(cnn, "smoothgrad", samples=4, chunk=2, seed=3, precision="float16")
    body = next(n for n in m16.graph.node if n.op_type == "Loop").attribute[0].g
    logs = [n for n in body.node if n.op_type in ("Log", "Cos", "Sqrt")]
    assert len(logs) == 3
    target = Reference(cnn).top({"x": x})
    a = run(m32, {"x": x, "target": target})["smoothgrad/x"]
    b = run(m16, {"x": x, "target": target})["smoothgrad/x"]
    # Float16 rounding of a noisy point can flip a ReLU whose input is within ~5e-4 of zero (a kink: the
    # map at that point is another linear piece's; sample 2 here); the other samples stay within float16
    # accuracy, and the same noise (float32 generator) is used: a different noise would err by O(1).
    errs = sorted(rel_err(b[i], a[i]) for i in range(len(x)))
    assert errs[1] < TOL16 and errs[0] < 2e-3
    assert errs[-1] < 0.2


def test_bad_precision_and_cli(tmp_path, cnn):
    with pytest.raises(CompileError, match="precision"):
        onnxplain.compile(cnn, "gradient", precision="bfloat16")
    from onnxplain.cli import main

    src, dst = tmp_path / "m.onnx", tmp_path / "m16.onnx"
    onnx.save(cnn, str(src))
    assert main(["compile", str(src), "-m", "gradient", "--float16", "-o", str(dst)]) == 0
    m16 = onnx.load(str(dst))
    assert {p.key: p.value for p in m16.metadata_props}["onnxplain.precision"] == "float16"
    x = rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = np.array([1, 2])
    a = run(onnxplain.compile(cnn, "gradient"), {"x": x, "target": t})["gradient/x"]
    assert rel_err(run(m16, {"x": x, "target": t})["gradient/x"], a) < TOL16


def test_keep_float32_option_and_idempotent_interface(cnn, x):
    """``to_float16(..., keep_float32=[op])`` keeps that op in float32: its float inputs are float32."""
    m32 = onnxplain.compile(cnn, "gradient")
    m16 = to_float16(m32, keep_float32=["Relu"])
    inferred = onnx.shape_inference.infer_shapes(m16)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    relus = [n for n in m16.graph.node if n.op_type == "Relu"]
    assert relus and all(types[n.input[0]] == TensorProto.FLOAT for n in relus)
    convs = [n for n in m16.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[0]] == TensorProto.FLOAT16 for n in convs)
    t = Reference(cnn).top({"x": x})
    a = run(m32, {"x": x, "target": t})["gradient/x"]
    assert rel_err(run(m16, {"x": x, "target": t})["gradient/x"], a) < TOL16


class OneHot(OpRun):  # the class name is the op type it replaces
    """``OneHot`` for ``onnx.reference`` with a one-element ``depth`` tensor (NumPy 2 rejects it there)."""

    def _run(self, indices, depth, values, axis=None):
        d = int(np.asarray(depth).reshape(-1)[0])
        hit = np.arange(d) == np.where(indices < 0, indices + d, indices)[..., None]
        y = np.where(hit, values[1], values[0]).astype(values.dtype)
        return (np.moveaxis(y, -1, -1 if axis is None else axis),)


def _reference_float16(model, feeds):
    """Evaluate ``model`` with ``onnx.reference`` (NumPy arithmetic in each tensor's own type: float16 nodes
    compute and round in float16, unlike ONNX Runtime's CPU provider, which computes most float16 kernels in
    float32); returns every float node output, intermediate ones included."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    for n in model.graph.node:
        m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in n.output if o and o not in known)
    with np.errstate(over="ignore"):  # a float32 HardSigmoid slope times a large input saturates to 1 by design
        outs = ReferenceEvaluator(m, new_ops=[OneHot]).run(None, feeds)
    return {o.name: v for o, v in zip(m.graph.output, outs) if np.issubdtype(np.asarray(v).dtype, np.floating)}


def test_gradient_family_true_float16_arithmetic(cnn):
    """Float16 NaN on CUDA (bench/results/h200): not a float16 overflow of the graph's arithmetic. Evaluated node by
    node in float16 (sanity.py's input and seed), every intermediate is finite and the maps match float64."""
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = Reference(cnn)
    target = ref.top({"x": x})
    m16 = onnxplain.compile(cnn, "gradient", precision="float16")
    vals = _reference_float16(m16, {"x": x, "target": target})
    assert sum(v.dtype == np.float16 for v in vals.values()) >= 15  # really float16 arithmetic
    assert all(np.isfinite(v).all() for v in vals.values())
    assert rel_err(vals["gradient/x"], ref.logit_gradient(x.astype(np.float64), target)) < TOL16
    gbp = onnxplain.compile(cnn, "guided_backprop", precision="float16")
    vals = _reference_float16(gbp, {"x": x, "target": target})
    assert all(np.isfinite(v).all() for v in vals.values())
    a = run(onnxplain.compile(cnn, "guided_backprop"), {"x": x, "target": target})["guided_backprop/x"]
    assert rel_err(vals["guided_backprop/x"], a) < TOL16


def _mask_model(w_mask: float, alpha: float):
    """Conv-Relu, then the ReLU mask as a depthwise 1x1 ``Conv`` (weight ``w_mask``) and ``HardSigmoid(alpha)``,
    applied to ``g``: ``g * [y > 0]`` for ``y >= 1 / (w_mask alpha)`` (a variant of the mask tried for speed,
    docs/speed.md; its weight and slope lie beyond float16's range)."""
    r = rng(7)
    inits = {"w": (r.standard_normal((3, 3, 3, 3)) / 3).astype(np.float32),
             "wm": np.full((3, 1, 1, 1), w_mask, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z"], ["y"]),
             helper.make_node("Conv", ["y", "wm"], ["s"], group=3),
             helper.make_node("HardSigmoid", ["s"], ["mask"], alpha=alpha, beta=0.0),
             helper.make_node("Mul", ["g", "mask"], ["out"])]
    return make_model(nodes, [("x", [2, 3, 5, 5]), ("g", [2, 3, 5, 5])], [("out", [2, 3, 5, 5]), ("y", [2, 3, 5, 5])],
                      inits)


def test_constants_beyond_float16_range_stay_float32():
    """A float32 weight/slope beyond 65504 became inf in float16 and ``inf * 0 = NaN`` at every dead ReLU unit: the
    float16 maps of the gradient family were NaN on the H200 run (bench/results/h200, a working tree with the mask
    above). Such constants and their readers now stay float32; evaluated in true float16 arithmetic the masked
    product is exact (``g * [y > 0]`` from the graph's own float16 ``y``)."""
    m16 = to_float16(_mask_model(2.0 ** 70, 2.0 ** 72))
    x = rng(8).standard_normal((2, 3, 5, 5)).astype(np.float32)
    g = rng(9).standard_normal((2, 3, 5, 5)).astype(np.float32)
    vals = _reference_float16(m16, {"x": x, "g": g})
    assert vals["z"].dtype == vals["y/float16"].dtype == np.float16  # the Conv-Relu really ran in float16
    assert (vals["y"] == 0).sum() > 10  # dead units: where the float16 weight was inf * 0
    y = vals["y"].astype(np.float64)
    assert np.isfinite(vals["out"]).all()
    np.testing.assert_array_equal(vals["out"], g * (y > 0))
    inits = {t.name: t.data_type for t in m16.graph.initializer}
    assert inits["wm"] == TensorProto.FLOAT and inits["w"] == TensorProto.FLOAT16


def test_small_constants_below_float16_normal_range_stay_float32():
    """A scalar 1e-7 is subnormal in float16 (1.19e-7: 19% off): the node reading it stays float32."""
    r = rng(10)
    w = (r.standard_normal((2, 3, 3, 3)) / 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["z", "c"], ["out"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("out", [1, 2, 4, 4])], {"w": w, "c": np.float32(1e-7)})
    x = r.standard_normal((1, 3, 4, 4)).astype(np.float32)
    out = _reference_float16(to_float16(model), {"x": x})["out"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    z = np.einsum("nchwij,ocij->nohw", np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3)),
                  w.astype(np.float64))
    assert rel_err(out, z * 1e-7) < TOL16
