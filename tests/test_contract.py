"""The output contract of compiled models (issue: "Output contract") and the canonicalization passes."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxplain
from onnxplain.compiler import canonicalize as canon
from onnxplain.compiler.api import prepare
from onnxplain.compiler.graph import Graph
from nets import mlp, small_cnn
from reference import Reference, make_model, rel_err, rng, run

METHODS = ["gradient", "input_t_gradient", "deconvnet", "guided_backprop", "integrated_gradients", "smoothgrad",
           "vargrad"]


@pytest.fixture(scope="module")
def compiled():
    return onnxplain.compile(small_cnn(), METHODS, steps=4, samples=3)


def test_outputs_inputs_and_shapes(compiled):
    names = [o.name for o in compiled.graph.output]
    assert names == ["prob"] + [f"{m}/x" for m in METHODS]
    inputs = [i.name for i in compiled.graph.input]
    assert inputs == ["x", "target"]
    x = rng().standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = run(compiled, {"x": x})
    for m in METHODS:
        assert out[f"{m}/x"].shape == x.shape and out[f"{m}/x"].dtype == np.float32
    original = run(small_cnn(), {"x": x})["prob"]
    np.testing.assert_allclose(out["prob"], original, rtol=1e-5, atol=1e-7)


def test_standard_onnx_only(compiled):
    onnx.checker.check_model(compiled, full_check=True)
    assert compiled.ir_version <= 10
    assert {o.domain for o in compiled.opset_import} <= {"", "ai.onnx"}

    def domains(graph):
        for n in graph.node:
            yield n.domain
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    yield from domains(a.g)
    assert set(domains(compiled.graph)) <= {"", "ai.onnx"}
    opset = next(o.version for o in compiled.opset_import if o.domain in ("", "ai.onnx"))
    assert 18 <= opset <= 20  # loadable by ONNX Runtime 1.17+


def test_metadata_records_methods_params_rules_version(compiled):
    meta = {p.key: p.value for p in compiled.metadata_props}
    assert meta["onnxplain.version"] == onnxplain.__version__
    methods = json.loads(meta["onnxplain.methods"])
    assert methods["integrated_gradients"]["steps"] == 4 and methods["smoothgrad"]["samples"] == 3
    rules = json.loads(meta["onnxplain.rules"])
    assert rules["guided_backprop"]["relu1"] == "guided_backprop"
    assert rules["guided_backprop"]["conv1"] == "gradient"
    assert rules["gradient"]["relu1"] == "gradient"
    assert meta["onnxplain.explained_tensor"] == "logits"


def test_emitted_nodes_are_named_after_forward_node_and_rule(compiled):
    names = [n.name for n in compiled.graph.node]
    assert any(n.startswith("conv2/gradient/Conv") for n in names)  # stride 1: the flipped-kernel Conv
    assert any(n.startswith("relu1/guided_backprop/") for n in names)


def test_backward_methods_share_one_forward(compiled):
    """The forward nodes appear once in the main graph; sampling methods have their own copy in a Loop."""
    forward_convs = [n.name for n in compiled.graph.node if n.op_type == "Conv" and "/" not in n.name]
    assert forward_convs == ["conv1", "conv2"]  # emitted nodes are named <node>/<rule>/<op>
    ops = [n.op_type for n in compiled.graph.node]
    assert ops.count("Loop") == 3  # integrated_gradients, smoothgrad, vargrad


def test_compiled_file_is_not_larger_than_needed():
    model = small_cnn()
    compiled = onnxplain.compile(model, ["gradient", "integrated_gradients", "smoothgrad"], steps=4, samples=4)
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    extra = sum(t.ByteSize() for t in compiled.graph.initializer) - weights
    assert extra < 0.10 * weights + 4096  # constants of the backward pass only, no weight copies


def test_choose_output_and_inputs_by_name():
    """Two inputs and two outputs: explain output 'b' w.r.t. input 'u' only."""
    r = rng(3)
    w1, w2 = r.standard_normal((4, 3)).astype(np.float32), r.standard_normal((4, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["u", "w1"], ["p"]), helper.make_node("MatMul", ["v", "w2"], ["q"]),
             helper.make_node("Add", ["p", "q"], ["s"]), helper.make_node("Tanh", ["s"], ["a"]),
             helper.make_node("Mul", ["s", "s"], ["b"])]
    model = make_model(nodes, [("u", ["N", 4]), ("v", ["N", 4])], [("a", ["N", 3]), ("b", ["N", 3])],
                       {"w1": w1, "w2": np.concatenate([w2, w2[:, :1]], 1)})
    compiled = onnxplain.compile(model, "gradient", output="b", inputs=["u"])
    assert [o.name for o in compiled.graph.output] == ["a", "b", "gradient/u"]
    u, v = r.standard_normal((3, 4)).astype(np.float32), r.standard_normal((3, 4)).astype(np.float32)
    out = run(compiled, {"u": u, "v": v})
    ref = Reference(model, "b")
    t = ref.top({"u": u, "v": v})
    assert rel_err(out["gradient/u"], ref.logit_gradient(u, t, "u", other={"v": v})) < 1e-5
    both = run(onnxplain.compile(model, "gradient", output="b"), {"u": u, "v": v})
    assert rel_err(both["gradient/v"], ref.logit_gradient(v, t, "v", other={"u": u})) < 1e-5


def test_softmax_strip_is_optional():
    model = small_cnn()
    x = rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = run(onnxplain.compile(model, "gradient", strip_softmax=False), {"x": x})
    ref = Reference(model, "prob")
    assert rel_err(out["gradient/x"], ref.logit_gradient(x, ref.top({"x": x}))) < 1e-4


def _bn_model(prev: str):
    r = rng(11)
    c = 4
    if prev == "Conv":
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
        w = r.standard_normal((c, 3, 3, 3)).astype(np.float32)
    elif prev == "ConvTranspose":
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[2, 2], group=1)]
        w = r.standard_normal((3, c, 3, 3)).astype(np.float32)
    else:
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"],
                                                                               transB=1, alpha=0.7, beta=1.3)]
        w = r.standard_normal((c, 3 * 36)).astype(np.float32)
    nodes.append(helper.make_node("BatchNormalization", ["y", "g", "be", "mu", "var"], ["z"], epsilon=1e-3))
    nodes.append(helper.make_node("Relu", ["z"], ["out"]))
    inits = {"w": w, "b": r.standard_normal(c).astype(np.float32), "g": r.uniform(0.5, 2, c).astype(np.float32),
             "be": r.standard_normal(c).astype(np.float32), "mu": r.standard_normal(c).astype(np.float32),
             "var": r.uniform(0.5, 2, c).astype(np.float32)}
    out_shape = {"Conv": ["N", c, 6, 6], "ConvTranspose": ["N", c, 13, 13], "Gemm": ["N", c]}[prev]
    return make_model(nodes, [("x", ["N", 3, 6, 6])], [("out", out_shape)], inits)


@pytest.mark.parametrize("prev", ["Conv", "ConvTranspose", "Gemm"])
def test_batchnorm_folding_keeps_outputs(prev):
    model = _bn_model(prev)
    g = prepare(model)
    assert not any(n.op_type == "BatchNormalization" for n in g.nodes)
    x = rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(g.to_model(), {"x": x})["out"], run(model, {"x": x})["out"], rtol=1e-5, atol=1e-5)


def test_passes_keep_outputs_on_every_fixture_kind():
    """Identity/Dropout removal, constant folding, shape folding and opset upgrade keep a model's outputs."""
    nodes = [helper.make_node("Identity", ["x"], ["i"]), helper.make_node("Dropout", ["i"], ["d"]),
             helper.make_node("Shape", ["d"], ["s"]), helper.make_node("Constant", [], ["k"],
                                                                      value=helper.make_tensor("v", 7, [1], [-1])),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]), helper.make_node("Concat", ["n1", "k"], ["shp"],
                                                                                     axis=0),
             helper.make_node("Reshape", ["d", "shp"], ["r"]), helper.make_node("Transpose", ["w"], ["wt"]),
             helper.make_node("MatMul", ["r", "wt"], ["y"])]
    w = rng(1).standard_normal((5, 48)).astype(np.float32)
    model = make_model(nodes, [("x", ["N", 3, 4, 4])], [("y", ["N", 5])],
                       {"zero": np.array(0, np.int64), "zero1": np.array([0], np.int64), "w": w}, opset=13)
    g = prepare(model)
    ops = [n.op_type for n in g.nodes]
    assert ops == ["Reshape", "MatMul"], ops
    x = rng(2).standard_normal((3, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(run(g.to_model(), {"x": x})["y"], run(model, {"x": x})["y"], rtol=1e-6)
    assert g.opset >= canon.MIN_OPSET or next(o.version for o in g.model.opset_import if o.domain == "") >= 18


def test_upgraded_fixture_keeps_outputs():
    """An opset-17 legacy export upgraded to opset 18 and canonicalized computes the same logits."""
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "models", "fixtures", "vgg_legacy.onnx")
    ref = np.load(path.replace("_legacy.onnx", ".npz"))
    g = prepare(path)
    out = run(g.to_model(), {"input": ref["x"]})["logits"]
    np.testing.assert_allclose(out, run(onnx.load(path), {"input": ref["x"]})["logits"], rtol=1e-4, atol=1e-6)


def test_mlp_conservation_of_input_times_gradient_for_linear_net():
    """A bias-free linear network (no ReLU) is homogeneous: sum(x * grad) equals the logit."""
    model, _ = mlp(seed=4, sizes=(5, 3), bias=False)
    x = rng(6).standard_normal((4, 5)).astype(np.float32)
    out = run(onnxplain.compile(model, "input_t_gradient"), {"x": x})
    logits = out["logits"][np.arange(4), out["logits"].argmax(1)]
    np.testing.assert_allclose(out["input_t_gradient/x"].sum(1), logits, rtol=1e-5)


def test_health_outputs():
    model = small_cnn()
    x = rng(12).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = run(onnxplain.compile(model, ["gradient", "input_t_gradient"], health=True), {"x": x})
    logits = run(model, {"x": x})["prob"]
    ref = Reference(model, "logits")
    t = ref.top({"x": x})
    np.testing.assert_allclose(out["explained_value"], ref({"x": x})[np.arange(3), t], rtol=1e-5)
    np.testing.assert_allclose(out["input_t_gradient/relevance_sum"],
                               out["input_t_gradient/x"].reshape(3, -1).sum(1), rtol=1e-5, atol=1e-6)
    assert out["gradient/finite"].dtype == bool and out["gradient/finite"].all()
    assert logits.shape == (3, 5)


def _bn_then(layer: str):
    r = rng(21)
    c = 3
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["y"], epsilon=1e-3)]
    if layer == "Conv":
        nodes += [helper.make_node("Conv", ["y", "w", "b"], ["c"]), helper.make_node("Flatten", ["c"], ["out"])]
        w, shape, out = r.standard_normal((2, c, 3, 3)), ["N", c, 5, 5], ["N", 18]
    else:
        nodes += [helper.make_node("Gemm", ["y", "w", "b"], ["out"], transB=1, alpha=0.5, beta=2.0)]
        w, shape, out = r.standard_normal((4, c)), ["N", c], ["N", 4]
    inits = {"g": r.uniform(0.5, 2, c), "be": r.standard_normal(c), "mu": r.standard_normal(c),
             "var": r.uniform(0.5, 2, c), "w": w, "b": r.standard_normal(w.shape[0])}
    return make_model(nodes, [("x", shape)], [("out", out)], {k: v.astype(np.float32) for k, v in inits.items()}), \
        inits


@pytest.mark.parametrize("layer", ["Conv", "Gemm"])
def test_batchnorm_fold_after_keeps_outputs(layer):
    model, _ = _bn_then(layer)
    g = prepare(model, batchnorm="fold_after")
    assert not any(n.op_type == "BatchNormalization" for n in g.nodes)
    shape = [2, 3, 5, 5] if layer == "Conv" else [2, 3]
    x = rng(2).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(run(g.to_model(), {"x": x})["out"], run(model, {"x": x})["out"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["pass", "linear", "linear2"])
def test_batchnorm_as_its_own_layer(mode):
    """BatchNorm before a Gemm, LRP-epsilon: pass-through, one linear map, or two maps (shift, scale)."""
    model, p = _bn_then("Gemm")
    x = rng(5).standard_normal((3, 3)).astype(np.float32)
    out = run(onnxplain.compile(model, "lrp.epsilon", epsilon=0.5, batchnorm=mode), {"x": x})
    meta = {q.key: q.value for q in onnxplain.compile(model, "lrp.epsilon", batchnorm=mode).metadata_props}
    assert json.loads(meta["onnxplain.canonicalization"])["batchnorm"] == mode
    x64 = x.astype(np.float64)
    s = p["g"] / np.sqrt(p["var"] + 1e-3)
    y = s * (x64 - p["mu"]) + p["be"]
    z = 0.5 * y @ p["w"].T + 2.0 * p["b"]
    t = z.argmax(1)
    r = np.zeros_like(z)
    r[np.arange(3), t] = z[np.arange(3), t]

    def stab(v, eps):
        return v + eps * np.where(v >= 0, 1.0, -1.0)
    r_y = y * ((r / stab(z, 0.5)) @ (0.5 * p["w"]))
    if mode == "pass":
        expect = r_y
    elif mode == "linear":
        expect = x64 * s * r_y / stab(y, 0.5)
    else:
        m = x64 - p["mu"]
        expect = x64 * (m * s * r_y / stab(y, 0.5)) / stab(m, 0.5)
    assert rel_err(out["lrp.epsilon/x"], expect) < 1e-5
