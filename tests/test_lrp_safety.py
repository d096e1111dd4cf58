"""LRP numerical safety (no NaN/Inf anywhere, ever) and bad input (clear CompileErrors, CLI exit code 2).

Every registered method whose name starts with ``lrp`` or ``deep_taylor`` is compiled into one model
(``health=True``) for networks built to hit the dangerous cases: all-zero inputs, outputs with all-zero
weights (exactly zero activations), dead ReLUs (large negative bias) and zero denominators (a Gemm
column of zeros, explained on purpose).  Every output must be finite and every ``<method>/finite`` flag
true.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxplain
from onnxplain.cli import main
from nets import mlp, small_cnn
from reference import make_model, rng, run

LRP_METHODS = [n for n in onnxplain.methods() if n.startswith(("lrp", "deep_taylor"))]
SPEC = {"rules": [{"select": {"position": "first"}, "rule": "lrp.flat"},
                  {"select": {"position": "last"}, "rule": {"name": "lrp.alpha_beta", "alpha": 2, "beta": 1}},
                  {"select": {"op": "Conv"}, "rule": "lrp.gamma"},
                  {"rule": "lrp.epsilon"}]}
# low/high go to every method that has them (lrp.bounded, deep_taylor.bounded, lrp.epsilon_gamma_box,
# lrp), rules to lrp
PARAMS = {"low": -3.0, "high": 3.0, "rules": SPEC}


def test_every_lrp_method_is_covered():
    assert len(LRP_METHODS) >= 20 and "lrp" in LRP_METHODS and "deep_taylor" in LRP_METHODS


# --------------------------------------------------------------------------- the networks


def _set(model, **arrays):
    """A copy of ``model`` with some initializers replaced."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in arrays:
            t.CopyFrom(numpy_helper.from_array(np.asarray(arrays[t.name], np.float32), t.name))
    return m


def _init(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name).copy()


def _mlp_zero_rows():
    """First layer: outputs 0..3 have all-zero weights and bias (exactly zero activations)."""
    m, _ = mlp(seed=1)
    w0, b0 = _init(m, "w0"), _init(m, "b0")
    w0[:4], b0[:4] = 0, 0
    return _set(m, w0=w0, b0=b0)


def _mlp_dead():
    """First layer bias -100: every ReLU is dead, the logits are constant."""
    m, _ = mlp(seed=2)
    return _set(m, b0=np.full(8, -100.0))


def _cnn_zero_channels():
    m = small_cnn(seed=3)
    w1, b1 = _init(m, "w1"), _init(m, "b1")
    w1[:2], b1[:2] = 0, 0
    return _set(m, w1=w1, b1=b1)


def _cnn_dead():
    m = small_cnn(seed=4)
    return _set(m, b1=np.full(4, -100.0), b3=np.full(12, -100.0))


def _zero_column():
    """Gemm(transB=0)-Relu-Gemm(transB=0) whose weight columns 0 (layer 1) and 1 (layer 2) are all zero,
    with zero bias there: output 1 is exactly 0 for every input, so every denominator there is 0."""
    r = rng(6)
    w1 = r.standard_normal((5, 6)).astype(np.float32)
    w2 = r.standard_normal((6, 3)).astype(np.float32)
    b1 = (0.1 * r.standard_normal(6)).astype(np.float32)
    b2 = (0.1 * r.standard_normal(3)).astype(np.float32)
    w1[:, 0], b1[0], w2[:, 1], b2[1] = 0, 0, 0, 0
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc0"),
             helper.make_node("Relu", ["h"], ["a"], name="relu0"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], name="fc1")]
    return make_model(nodes, [("x", ["N", 5])], [("logits", ["N", 3])], {"w1": w1, "b1": b1, "w2": w2, "b2": b2})


def _all_zero():
    """Every weight and bias zero: every denominator of every rule is 0 (or the stabilizer)."""
    m, _ = mlp(seed=7)
    return _set(m, **{t.name: np.zeros(t.dims) for t in m.graph.initializer})


NETS = {"mlp": lambda: mlp(seed=0)[0], "cnn": lambda: small_cnn(seed=0), "mlp-zero-rows": _mlp_zero_rows,
        "mlp-dead-relus": _mlp_dead, "cnn-zero-channels": _cnn_zero_channels, "cnn-dead-relus": _cnn_dead,
        "gemm-zero-column": _zero_column, "mlp-all-zero-weights": _all_zero}


def _feeds(model):
    shape = [d.dim_value or 3 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = rng(8).standard_normal(shape).astype(np.float32)
    k = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    explicit = (np.arange(shape[0]) % k).astype(np.int64)
    return [("zeros", {"x": np.zeros(shape, np.float32)}),
            ("zeros, each class", {"x": np.zeros(shape, np.float32), "target": explicit}),
            ("random", {"x": x}),
            ("random, each class", {"x": x, "target": explicit}),
            ("random, zero output", {"x": x, "target": np.ones(shape[0], np.int64)}),
            ("huge", {"x": 1e4 * x}), ("tiny", {"x": 1e-30 * x})]


@pytest.mark.parametrize("net", list(NETS))
def test_all_outputs_finite(net):
    model = NETS[net]()
    compiled = onnxplain.compile(model, LRP_METHODS, health=True, params=PARAMS)
    for what, feeds in _feeds(model):
        out = run(compiled, feeds)
        bad = [k for k, v in out.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        assert not bad, f"{net}, {what}: non-finite {bad}"
        flags = [m for m in LRP_METHODS if not out[f"{m}/finite"].all()]
        assert not flags, f"{net}, {what}: finite flag false for {flags}"
        assert len([k for k in out if k.endswith("/finite")]) == len(LRP_METHODS)


def test_finite_flag_sees_nan():
    """The health flag is per sample: a NaN in one sample's input flips only that sample's flag."""
    model = mlp(seed=0)[0]
    compiled = onnxplain.compile(model, ["lrp.z", "lrp.epsilon_plus", "lrp.flat"], health=True)
    x = rng(11).standard_normal((3, 6)).astype(np.float32)
    x[1, 2] = np.nan
    out = run(compiled, {"x": x})
    for m in ("lrp.z", "lrp.epsilon_plus", "lrp.flat"):
        assert out[f"{m}/finite"].tolist() == [True, False, True], m


def test_zero_network_gives_zero_relevance():
    """With all weights and biases zero, every logit is 0, so every relevance method returns 0 (not NaN,
    not 1/eps blow-ups)."""
    model = _all_zero()
    out = run(onnxplain.compile(model, LRP_METHODS, params=PARAMS), {"x": rng(9).standard_normal((3, 6))
                                                                        .astype(np.float32)})
    for m in LRP_METHODS:
        assert np.abs(out[f"{m}/x"]).max() == 0, m


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def three_layers():
    return mlp(seed=0)[0]  # fc0, fc1, fc2 with relu0, relu1


BAD_SPECS = {  # name -> (spec, words the message must contain)
    "unknown rule": ([{"rule": "lrp.nonsense"}], ["unknown rule", "lrp.nonsense"]),
    "not json": ("{not json", ["malformed rule spec"]),
    "wrong entry key": ([{"selct": {"op": "Gemm"}, "rule": "lrp.z"}], ["entry 0", "selct"]),
    "entry without rule": ([{"select": {"op": "Gemm"}}], ["entry 0", "rule"]),
    "rules not a list": ({"rules": "lrp.z"}, ["'rules' list"]),
    "rules a mapping": ({"rules": {"rule": "lrp.z"}}, ["'rules' list"]),
    "rule not a name": ([{"rule": 5}], ["a rule must be a name"]),
    "unknown selector key": ([{"select": {"kind": "Gemm"}, "rule": "lrp.z"}], ["unknown selector key", "kind"]),
    "bad name regex": ([{"select": {"name": "fc["}, "rule": "lrp.z"}], ["bad name pattern", "fc["]),
    "bad position": ([{"select": {"position": "middle"}, "rule": "lrp.z"}], ["position", "middle"]),
    "bad index": ([{"select": {"index": 3}, "rule": "lrp.z"}], ["index must be [low, high]"]),
    "unknown base": ({"base": "lrp.nope", "rules": []}, ["unknown base composite", "lrp.nope"]),
    "bounded on a non-first layer": (
        [{"select": {"position": "last"}, "rule": {"name": "lrp.bounded", "low": -1, "high": 1}},
         {"rule": "lrp.z"}], ["fc2", "lrp.bounded"]),
    "bounded on the middle layer": (
        [{"select": {"index": [1, 2]}, "rule": {"name": "lrp.bounded", "low": -1, "high": 1}}, {"rule": "lrp.z"}],
        ["fc1", "lrp.bounded"]),
    "bounded without a range": (
        [{"select": {"position": "first"}, "rule": "lrp.bounded"}, {"rule": "lrp.z"}], ["needs low and high"]),
    "linear rule on a Relu": ([{"select": {"op": "Relu"}, "rule": "lrp.z"}, {"rule": "lrp.z"}],
                              ["relu0", "relu1", "cannot be applied"]),
    "layer without a rule": ([{"select": {"name": "fc0"}, "rule": "lrp.z"}], ["fc1", "fc2", "no LRP rule"]),
    "alpha - beta != 1 in a spec": ([{"rule": {"name": "lrp.alpha_beta", "alpha": 3, "beta": 1}}],
                                    ["alpha - beta"]),
    "unknown rule parameter": ([{"rule": {"name": "lrp.epsilon", "epsilonn": 0.1}}], ["epsilonn"]),
    "non-numeric rule parameter": ([{"rule": {"name": "lrp.epsilon", "epsilon": "big"}}], ["epsilon", "big"]),
    "unknown lrp.norm parameter": ([{"select": {"op": "Relu"}, "rule": {"name": "lrp.norm", "foo": 1}},
                                    {"rule": "lrp.z"}], ["foo"]),
}
_SPEC_BUGS: dict = {}  # every case once marked here is fixed


def _spec_params():
    return [pytest.param(k, marks=[pytest.mark.xfail(strict=True, reason=_SPEC_BUGS[k])] if k in _SPEC_BUGS else [],
                         id=k) for k in BAD_SPECS]


@pytest.mark.parametrize("case", _spec_params())
def test_bad_spec_raises(case, three_layers):
    spec, words = BAD_SPECS[case]
    with pytest.raises(onnxplain.CompileError) as exc:
        onnxplain.compile(three_layers, "lrp", rules=spec)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


@pytest.mark.parametrize("case", _spec_params())
def test_bad_spec_cli(case, three_layers, tmp_path, capsys):
    spec, words = BAD_SPECS[case]
    model, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(three_layers, model)
    path = tmp_path / "spec.json"
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    code = main(["compile", str(model), "-m", "lrp", "--rules", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxplain")]
    for w in words:
        assert w in err, (w, err)
    if case == "not json":
        assert "spec.json" in err  # the message names the file


BAD_PARAMS = {  # name -> (methods, params, words)
    "alpha - beta != 1": ("lrp.alpha_beta", {"alpha": 3.0, "beta": 1.0}, ["alpha - beta = 1", "alpha=3"]),
    "negative beta": ("lrp.alpha_beta", {"alpha": 0.5, "beta": -0.5}, ["beta"]),
    "epsilon_gamma_box without low/high": ("lrp.epsilon_gamma_box", {}, ["epsilon_gamma_box", "low and high"]),
    "epsilon_gamma_box with low only": ("lrp.epsilon_gamma_box", {"low": 0.0}, ["low and high"]),
    "deep_taylor.bounded without low/high": ("deep_taylor.bounded", {}, ["low and high"]),
    "lrp without a spec": ("lrp", {}, ["needs a rule spec"]),
    "bounded low of the wrong length": ("lrp.bounded", {"low": [0, 0, 0], "high": [1, 1, 1]}, ["low"]),
}
_PARAM_BUGS: dict = {}  # every case once marked here is fixed


@pytest.mark.parametrize("case", [pytest.param(k, marks=[pytest.mark.xfail(strict=True, reason=_PARAM_BUGS[k])]
                                               if k in _PARAM_BUGS else [], id=k) for k in BAD_PARAMS])
def test_bad_method_params(case, three_layers, tmp_path, capsys):
    method, params, words = BAD_PARAMS[case]
    with pytest.raises(onnxplain.CompileError) as exc:
        onnxplain.compile(three_layers, method, params=params)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))
    model, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(three_layers, model)
    args = ["compile", str(model), "-m", method, "-o", str(out)]
    for k, v in params.items():
        args += ["--param", f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"]
    assert main(args) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_all_problems_reported_at_once(three_layers):
    spec = [{"select": {"kind": "Gemm"}, "rule": "lrp.z"}, {"rule": "lrp.nonsense"}, {"rule": "lrp.z"}]
    with pytest.raises(onnxplain.CompileError) as exc:
        onnxplain.compile(three_layers, "lrp", rules=spec)
    assert len(exc.value.problems) == 2
    assert "kind" in str(exc.value) and "lrp.nonsense" in str(exc.value)


def test_spec_bounded_uses_method_range(three_layers):
    x = rng(10).standard_normal((3, 6)).astype(np.float32)
    rest = {"rule": "lrp.z"}
    implicit = onnxplain.compile(three_layers, "lrp", low=-3.0, high=3.0,
                                 rules=[{"select": {"position": "first"}, "rule": "lrp.bounded"}, rest])
    explicit = onnxplain.compile(three_layers, "lrp", rules=[
        {"select": {"position": "first"}, "rule": {"name": "lrp.bounded", "low": -3.0, "high": 3.0}}, rest])
    np.testing.assert_allclose(run(implicit, {"x": x})["lrp/x"], run(explicit, {"x": x})["lrp/x"], rtol=1e-6)
