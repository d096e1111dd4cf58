"""Every LRP rule for linear layers against an independent float64 NumPy reference.

The reference knows nothing about onnxplain.  For a single linear layer (the layer output,
flattened per sample, *is* the logit vector) it obtains the layer's matrix ``M`` [K, D] and
bias ``b`` [K] by running the float64 copy of the model in ``onnx.reference.ReferenceEvaluator``
on the zero vector and the D basis vectors, checks ``M x + b`` against ONNX Runtime's forward
pass, and applies each rule's formula in matrix form, exactly as written in
``models/ZENNIT_NOTES.md`` section 2 (Zennit 0.5.1):

* ``stab(z) = z + eps * sign(z)`` with ``sign(0) = +1`` and ``eps = 1e-6`` (``lrp.epsilon``: its
  epsilon; ``lrp.z``: no stabilizer, a zero denominator gives zero relevance);
* seed ``R_j = z_j [j == target]`` (the explained logit times the one-hot seed), ``target`` the
  per-sample argmax of the flattened output unless given.

Then: two-layer networks computed layer by layer (ReLU = pass-through), rule specs and
selectors (the ``onnxplain.rules`` metadata), and conservation on bias-free ReLU networks.
"""
from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

import onnxplain
from onnxplain.cli import main
from nets import mlp, small_cnn
from reference import make_model, rel_err, rng, run, to_float64

# Tolerance: the compiled maps are float32 (unit roundoff 6e-8); every reference quantity is a sum
# of at most ~150 products followed by one division, and every denominator that the tests feed is a
# sum of terms of one sign (z+ / alpha-beta / gamma / z^B / w^2 / flat parts) or the target logit
# itself, so float32 gives ~1e-6 relative L2 error at most (alpha - beta mixing can amplify
# by alpha + beta = 5).  1e-5 keeps a margin while a wrong weight, bias part, sign, stabilizer or mask
# gives errors of 1e-2 and more (measured on the biased plain conv: full bias instead of b+ in z+ 2e-2,
# z^B without the bias cancelling 2e-2, gamma 0.25 for 0.5 5e-2, w^2 without b^2 8e-2, epsilon 1e-6
# for 0.3 1e-1, iNNvestigate's alpha-beta bias 0.27).  Measured maximum here: 2.3e-7.
TOL = 1e-5
EPS = 1e-6  # Zennit's stabilizer, used by every rule but lrp.z and lrp.epsilon

# --------------------------------------------------------------------------- the reference


def stab(z, eps=EPS):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def sdiv(a, d):
    """a / d where d != 0, else 0."""
    nz = d != 0
    return np.where(nz, a / np.where(nz, d, 1.0), 0.0)


def ref_rule(name, M, b, x, R, **p):
    """Input relevance [N, D] of rule ``name`` for ``z = x M^T + b``; x [N, D], R [N, K], float64."""
    M, b, x, R = (np.asarray(a, np.float64) for a in (M, b, x, R))
    Mp, Mn, bp, bn = np.maximum(M, 0), np.minimum(M, 0), np.maximum(b, 0), np.minimum(b, 0)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    z = x @ M.T + b
    if name == "lrp.z":
        return x * (sdiv(R, z) @ M)
    if name == "lrp.epsilon":
        return x * ((R / stab(z, p["epsilon"])) @ M)
    if name in ("lrp.z_plus", "lrp.alpha_beta", "lrp.alpha_2_beta_1", "lrp.alpha_1_beta_0"):
        alpha, beta = {"lrp.z_plus": (1, 0), "lrp.alpha_2_beta_1": (2, 1), "lrp.alpha_1_beta_0": (1, 0)}.get(
            name, (p.get("alpha"), p.get("beta")))
        act = xp @ Mp.T + bp + xn @ Mn.T      # activator: b+ only
        inh = xp @ Mn.T + bn + xn @ Mp.T      # inhibitor: b- only
        sp, sn = R / stab(act), R / stab(inh)
        return alpha * (xp * (sp @ Mp) + xn * (sp @ Mn)) - beta * (xp * (sn @ Mn) + xn * (sn @ Mp))
    if name == "lrp.gamma":
        g = p["gamma"]
        Wu, Wd, bu, bd = M + g * Mp, M + g * Mn, b + g * bp, b + g * bn
        up = xp @ Wu.T + bu + xn @ Wd.T
        down = xp @ Wd.T + bd + xn @ Wu.T
        sp = np.where(z > 0, R, 0.0) / stab(up)
        sn = np.where(z < 0, R, 0.0) / stab(down)
        return xp * (sp @ Wu + sn @ Wd) + xn * (sp @ Wd + sn @ Wu)
    if name == "lrp.w_square":
        zs = (M * M).sum(1) + b * b
        return (R / stab(zs)) @ (M * M)
    if name == "lrp.flat":
        F = (M != 0).astype(np.float64)  # unit weights on the layer's connections, no bias, unit inputs
        return (R / stab(F.sum(1))) @ F
    if name == "lrp.bounded":
        L, H = p["L"], p["H"]  # full input-shaped bounds, flattened [D]
        zb = x @ M.T - L @ Mp.T - H @ Mn.T  # the bias cancels
        s = R / stab(zb)
        return x * (s @ M) - L * (s @ Mp) - H * (s @ Mn)
    raise KeyError(name)


def seed(z, target=None):
    """R = z * one_hot(target); target < 0 or None -> argmax of the sample."""
    n = len(z)
    t = z.argmax(1) if target is None else np.where(np.asarray(target) < 0, z.argmax(1), target)
    R = np.zeros_like(z)
    R[np.arange(n), t] = z[np.arange(n), t]
    return R


def layer_matrix(model, in_shape, name="x", output="logits"):
    """(M [K, D], b [K]) of a model that is affine in its input, in float64 (ONNX reference evaluator)."""
    ev = ReferenceEvaluator(to_float64(model))
    d = int(np.prod(in_shape))
    basis = np.concatenate([np.zeros((1, d)), np.eye(d)]).reshape((d + 1,) + tuple(in_shape))
    out = ev.run([output], {name: basis})[0].reshape(d + 1, -1)
    return (out[1:] - out[0]).T, out[0]


def channel_bounds(x_shape):
    """Per-channel (axis 1) low/high as lists, and as full flattened arrays [D] for the reference."""
    c = x_shape[1]
    low = [-2.5 - 0.1 * i for i in range(c)]
    high = [2.5 + 0.05 * i for i in range(c)]
    shape = (1, c) + (1,) * (len(x_shape) - 2)
    full = lambda v: np.broadcast_to(np.reshape(v, shape), (1,) + tuple(x_shape[1:])).reshape(-1)  # noqa: E731
    return low, high, full(low), full(high)


# --------------------------------------------------------------------------- single layers

RULES = {  # method -> its parameters
    "lrp.z": {}, "lrp.epsilon": {"epsilon": 0.3}, "lrp.z_plus": {}, "lrp.alpha_2_beta_1": {},
    "lrp.alpha_1_beta_0": {}, "lrp.alpha_beta": {"alpha": 3.0, "beta": 2.0}, "lrp.gamma": {"gamma": 0.5},
    "lrp.w_square": {}, "lrp.flat": {}, "lrp.bounded": None,  # per-channel low/high, set per case
}


def _w(r, *shape):
    return (r.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _single(op, x_shape, inits, opts=None, pre_relu=False, **attrs):
    """``x -> [Relu ->] op -> Flatten -> logits`` and the same without the Relu (for the matrix)."""
    def build(relu):
        ins = ["xr" if relu else "x"] + list(inits)
        nodes = ([helper.make_node("Relu", ["x"], ["xr"], name="relu")] if relu else []) + [
            helper.make_node(op, ins, ["y"], name="layer", **attrs),
            helper.make_node("Flatten", ["y"], ["logits"], name="flatten")]
        return make_model(nodes, [("x", ["N"] + list(x_shape[1:]))], [("logits", ["N", "K"])], inits)
    return dict(model=build(pre_relu), layer=build(False), x_shape=x_shape, opts=opts or {}, pre_relu=pre_relu)


def _single_left(r):
    """``W @ x`` with the constant on the left: x [N, 5, 3] -> [N, 4, 3]."""
    w = _w(r, 4, 5)
    nodes = [helper.make_node("MatMul", ["w", "x"], ["y"], name="layer"),
             helper.make_node("Flatten", ["y"], ["logits"], name="flatten")]
    m = make_model(nodes, [("x", ["N", 5, 3])], [("logits", ["N", "K"])], {"w": w})
    return dict(model=m, layer=m, x_shape=(4, 5, 3), opts={}, pre_relu=False)


def _conv2d(bias, groups, geometry):
    r = rng(100 * bias + 10 * groups + len(geometry))
    attrs = {"plain": {}, "stride2_asympad": dict(strides=[2, 2], pads=[1, 0, 2, 1]),
             "dilation2": dict(dilations=[2, 2], pads=[1, 2, 1, 0])}[geometry]
    inits = {"w": _w(r, 4, 4 // groups, 3, 3)}
    if bias:
        inits["b"] = (0.3 * r.standard_normal(4)).astype(np.float32)
    return _single("Conv", (4, 4, 6, 6), inits, group=groups, **attrs)


def _cases():
    cases = {}
    for bias in (True, False):
        for groups in (1, 2):
            for geometry in ("plain", "stride2_asympad", "dilation2"):
                cases[f"conv2d-{'bias' if bias else 'nobias'}-g{groups}-{geometry}"] = (
                    lambda b=bias, g=groups, ge=geometry: _conv2d(b, g, ge))
    cases["conv1d-stride2-pads"] = lambda r=rng(21): _single(
        "Conv", (4, 3, 9), {"w": _w(r, 4, 3, 3), "b": (0.3 * r.standard_normal(4)).astype(np.float32)},
        strides=[2], pads=[1, 2])
    cases["convtranspose-stride2"] = lambda r=rng(22): _single(
        "ConvTranspose", (4, 3, 4, 4), {"w": _w(r, 3, 2, 3, 3), "b": (0.3 * r.standard_normal(2)).astype(np.float32)},
        strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0])
    cases["gemm-transB1-alpha1.5"] = lambda r=rng(23): _single(
        "Gemm", (4, 7), {"w": _w(r, 5, 7), "b": (0.3 * r.standard_normal(5)).astype(np.float32)}, transB=1, alpha=1.5)
    cases["gemm-transB0-alpha0.7"] = lambda r=rng(24): _single(
        "Gemm", (4, 7), {"w": _w(r, 7, 5), "b": (0.3 * r.standard_normal(5)).astype(np.float32)}, transB=0, alpha=0.7)
    cases["gemm-transB0"] = lambda r=rng(25): _single(
        "Gemm", (4, 7), {"w": _w(r, 7, 5), "b": (0.3 * r.standard_normal(5)).astype(np.float32)}, transB=0)
    cases["gemm-transB1-alpha-1-beta-0.5"] = lambda r=rng(28): _single(
        "Gemm", (4, 7), {"w": _w(r, 5, 7), "b": (0.3 * r.standard_normal(5)).astype(np.float32)}, transB=1,
        alpha=-1.0, beta=-0.5)
    cases["matmul-2d"] = lambda r=rng(26): _single("MatMul", (4, 7), {"w": _w(r, 7, 5)})
    cases["matmul-3d"] = lambda r=rng(27): _single("MatMul", (4, 3, 6), {"w": _w(r, 6, 4)})
    cases["matmul-const-left"] = lambda r=rng(29): _single_left(r)
    cases["conv2d-autopad-same-lower-stride2"] = lambda r=rng(30): _single(
        "Conv", (4, 2, 5, 5), {"w": _w(r, 3, 2, 2, 3), "b": (0.3 * r.standard_normal(3)).astype(np.float32)},
        strides=[2, 2], auto_pad="SAME_LOWER")
    return cases


CASES = _cases()
_CACHE: dict = {}  # case -> (M, b, bounds, runs); runs hold the layer's input (after any Relu) flattened
_COMPILED: dict = {}


def _bn(pre_relu, opts):
    r = rng(11)
    c = 3
    inits = {"scale": (1 + 0.5 * r.standard_normal(c)).astype(np.float32),
             "bias": (0.3 * r.standard_normal(c)).astype(np.float32),
             "mean": (0.2 * r.standard_normal(c)).astype(np.float32),
             "var": (0.5 + r.random(c)).astype(np.float32)}
    return dict(_single("BatchNormalization", (4, c, 3, 3), inits, opts=opts, pre_relu=pre_relu, epsilon=1e-3),
                bn=inits)


def _inputs(x_shape, seed_):
    r = rng(seed_)
    x = np.clip(r.standard_normal(x_shape), -2, 2).astype(np.float32)
    return {"both signs": x, "non-negative": np.abs(x)}


def _evaluate(case_name, build, methods):
    """Compile once per case, run the inputs (argmax and explicit targets), keep outputs and references."""
    if case_name in _CACHE:
        return _CACHE[case_name]
    case = build()
    x_shape = case["x_shape"]
    M, b = layer_matrix(case["layer"], x_shape[1:])
    low, high, L, H = channel_bounds(x_shape)
    params = {m: (dict(p) if p is not None else {"low": low, "high": high}) for m, p in methods.items()}
    compiled = onnxplain.compile(case["model"], params, **case["opts"])
    runs = []
    for kind, x in _inputs(x_shape, zlib.crc32(case_name.encode())).items():
        xl = np.maximum(x, 0) if case["pre_relu"] else x
        xf = xl.reshape(len(x), -1).astype(np.float64)
        z = xf @ M.T + b
        for target in (None, np.array([1, -1, z.shape[1] - 1, 2 % z.shape[1]], np.int64)):
            feeds = {"x": x} if target is None else {"x": x, "target": target}
            out = run(compiled, feeds)
            # the reference's forward pass agrees with ONNX Runtime's (validates M and b)
            assert rel_err(out["logits"], z) < 1e-5, case_name
            runs.append((f"{kind}, target={'argmax' if target is None else target.tolist()}", xf,
                         seed(z, target), out))
    _CACHE[case_name] = (M, b, dict(L=L, H=H), runs)
    _COMPILED[case_name] = compiled
    return _CACHE[case_name]


# Gemm's alpha/beta are attributes of the op, not of the linear map; the rules modify the weight
# and bias *initializers* inside the op.  w^2 then gives alpha W^2 and beta C^2 instead of the
# layer's (alpha W)^2 and (beta C)^2 (changes z = sum W^2 + b^2 whenever there is a bias), and a
# negative alpha or beta swaps the positive and negative parts of M and b for every sign-splitting
# rule.  Measured: w^2 1e-2 .. 8e-2 relative error; with alpha = -1, beta = -0.5: O(1) for z+,
# alpha-beta, gamma and z^B.
_GEMM_ATTR = ("rules/lrp_layer.py Layer._params/_modify modify Gemm's weight and bias initializers, not the layer's "
              "matrix alpha*B and bias beta*C")
_XFAIL: dict = {}  # every case once marked here is fixed (Gemm alpha/beta are now part of the matrix)


def _single_params():
    out = []
    for case in CASES:
        for rule_name in RULES:
            reason = _XFAIL.get((case, rule_name))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(case, rule_name, marks=marks, id=f"{case}-{rule_name}"))
    return out


@pytest.mark.parametrize("case,rule_name", _single_params())
def test_single_layer_rule(case, rule_name):
    M, b, bounds, runs = _evaluate(case, CASES[case], RULES)
    p = dict(RULES[rule_name] or {}, **bounds)
    for what, xf, R, out in runs:
        ref = ref_rule(rule_name, M, b, xf, R, **p)
        got = out[f"{rule_name}/x"].reshape(len(xf), -1)
        assert np.isfinite(got).all()
        err = rel_err(got, ref)
        assert err < TOL, f"{case} {rule_name} ({what}): relative error {err:.2e}"


BN_MODES = {  # compile options -> what the kept BatchNorm does in lrp.epsilon
    "linear": dict(batchnorm="linear"),  # the per-channel affine layer y = s x + c, epsilon rule
    "linear2": dict(batchnorm="linear2"),  # shift m = x - mean, then scale y = s m + beta, epsilon on each
    "fold_bn=False": dict(fold_bn=False),  # kept and passed through (Zennit's Pass), like batchnorm="pass"
}


@pytest.mark.parametrize("mode", list(BN_MODES))
@pytest.mark.parametrize("pre_relu", [pytest.param(False, id="bn-alone"), pytest.param(True, id="relu-bn")])
def test_unfolded_batchnorm_epsilon(pre_relu, mode):
    """An unfolded BatchNormalization (after a Relu nothing can fold it) under lrp.epsilon."""
    name = f"bn-{pre_relu}-{mode}"
    M, b, _, runs = _evaluate(name, lambda: _bn(pre_relu, BN_MODES[mode]), {"lrp.epsilon": {"epsilon": 0.3}})
    assert np.allclose(M, np.diag(np.diag(M)))  # one scale per channel, nothing else
    compiled = _COMPILED[name]
    assert [n.op_type for n in compiled.graph.node].count("BatchNormalization") == 1  # not folded
    rules = json.loads({p.key: p.value for p in compiled.metadata_props}["onnxplain.rules"])["lrp.epsilon"]
    assert rules["layer"] == {"linear": "lrp.epsilon", "linear2": "lrp.batchnorm_two_maps",
                              "fold_bn=False": "lrp.pass"}[mode]
    assert rules.get("relu", "lrp.pass") == "lrp.pass"
    for what, xl, R, out in runs:  # xl: the BatchNorm's input; the Relu passes relevance unchanged
        if mode == "linear":
            ref = ref_rule("lrp.epsilon", M, b, xl, R, epsilon=0.3)
        elif mode == "linear2":
            bn = _bn(pre_relu, {})["bn"]  # per-channel parameters, expanded to the flattened input
            per = lambda v: np.repeat(v.astype(np.float64), xl.shape[1] // len(v))  # noqa: E731
            s = per(bn["scale"]) / np.sqrt(per(bn["var"]) + 1e-3)
            assert np.allclose(np.diag(M), s)
            m = xl - per(bn["mean"])
            r_m = m * s * R / stab(s * m + per(bn["bias"]), 0.3)
            ref = xl * r_m / stab(m, 0.3)
        else:
            ref = R
        err = rel_err(out["lrp.epsilon/x"].reshape(len(xl), -1), ref)
        assert err < TOL, f"{name} ({what}): relative error {err:.2e}"


# --------------------------------------------------------------------------- two layers, specs, selectors


@pytest.fixture(scope="module")
def two_layer():
    """Gemm-Relu-Gemm (nets.mlp), input with both signs, and the float64 forward pass."""
    model, layers = mlp(seed=3, sizes=(6, 9, 5))
    x = rng(5).standard_normal((5, 6)).astype(np.float32)
    (w1, b1), (w2, b2) = [(w.astype(np.float64), b.astype(np.float64)) for w, b in layers]
    z1 = x.astype(np.float64) @ w1.T + b1
    a1 = np.maximum(z1, 0)
    z2 = a1 @ w2.T + b2
    return model, x, (w1, b1, z1, a1), (w2, b2, z2)


SPEC = {"rules": [{"select": {"position": "first"}, "rule": "lrp.flat"}, {"rule": "lrp.z"}]}


def test_two_layers(two_layer):
    model, x, (w1, b1, z1, a1), (w2, b2, z2) = two_layer
    compiled = onnxplain.compile(model, {"lrp.epsilon_plus": {}, "lrp": {"rules": SPEC}})
    target = np.array([0, -1, 4, 2, 3], np.int64)
    xf = x.astype(np.float64)
    for t in (None, target):
        out = run(compiled, {"x": x} if t is None else {"x": x, "target": t})
        R2 = seed(z2, t)
        # EpsilonPlus: both Gemm layers are dense -> epsilon 1e-6; the ReLU passes relevance
        ra1 = ref_rule("lrp.epsilon", w2, b2, a1, R2, epsilon=1e-6)
        ref = ref_rule("lrp.epsilon", w1, b1, xf, ra1, epsilon=1e-6)
        assert rel_err(out["lrp.epsilon_plus/x"], ref) < TOL
        # spec: flat on the first layer, z on the rest
        ra1 = ref_rule("lrp.z", w2, b2, a1, R2)
        ref = ref_rule("lrp.flat", w1, b1, xf, ra1)
        assert rel_err(out["lrp/x"], ref) < TOL
    md = {p.key: p.value for p in compiled.metadata_props}
    rules = json.loads(md["onnxplain.rules"])
    assert rules["lrp"] == {"fc0": "lrp.flat", "relu0": "lrp.pass", "fc1": "lrp.z"}
    assert rules["lrp.epsilon_plus"] == {"fc0": "lrp.epsilon", "relu0": "lrp.pass", "fc1": "lrp.epsilon"}


def test_check_shows_rules(two_layer):
    model = two_layer[0]
    rows, problems = onnxplain.check(model, ["lrp.epsilon_plus", "lrp"], rules=SPEC)
    assert problems == []
    table = {name: rules for name, _, rules in rows}
    assert table["fc0"] == {"lrp.epsilon_plus": "lrp.epsilon", "lrp": "lrp.flat"}
    assert table["relu0"] == {"lrp.epsilon_plus": "lrp.pass", "lrp": "lrp.pass"}
    assert table["fc1"] == {"lrp.epsilon_plus": "lrp.epsilon", "lrp": "lrp.z"}


def test_check_cli_shows_rules(two_layer, tmp_path, capsys):
    path, spec = tmp_path / "mlp.onnx", tmp_path / "spec.json"
    onnx.save(two_layer[0], path)
    spec.write_text(json.dumps(SPEC))
    code = main(["check", str(path), "-m", "lrp", "--rules", str(spec)])
    text = capsys.readouterr().out
    assert code == 0
    lines = {ln.split()[0]: ln.split()[1:] for ln in text.splitlines() if ln.startswith(("fc", "relu"))}
    assert lines == {"fc0": ["Gemm", "lrp.flat"], "relu0": ["Relu", "lrp.pass"], "fc1": ["Gemm", "lrp.z"]}


def test_selectors_name_op_index_not():
    """Spec selectors on small_cnn (conv1, conv2, fc1, fc2 = linear layers 0..3); first match wins."""
    spec = {"rules": [
        {"select": {"op": "Conv", "index": [0, 1]}, "rule": "lrp.flat"},                     # conv1
        {"select": {"op": ["Conv"]}, "rule": "lrp.z_plus"},                                  # conv2
        {"select": {"name": "fc[0-9]+", "index": [-1, 4]}, "rule": "lrp.z"},                 # fc2 (last)
        {"select": {"op": "Relu", "name": "relu[12]"}, "rule": "gradient"},                  # relu1, relu2
        {"select": {"linear": True, "not": {"name": "conv.*"}}, "rule": {"name": "lrp.epsilon", "epsilon": 0.5}},
    ]}
    compiled = onnxplain.compile(small_cnn(), "lrp", rules=spec)
    md = {p.key: p.value for p in compiled.metadata_props}
    assert json.loads(md["onnxplain.rules"])["lrp"] == {
        "conv1": "lrp.flat", "relu1": "gradient", "pool1": "gradient", "conv2": "lrp.z_plus", "relu2": "gradient",
        "pool2": "lrp.norm", "flatten": "gradient", "fc1": "lrp.epsilon", "relu3": "lrp.pass", "fc2": "lrp.z"}
    x = rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.isfinite(run(compiled, {"x": x})["lrp/x"]).all()


def test_selector_name_is_a_full_match(two_layer):
    """``name`` is a regular expression matched against the whole node name; ``any`` combines selectors."""
    spec = {"rules": [{"select": {"name": "fc"}, "rule": "lrp.flat"},            # matches nothing (not fc0)
                      {"select": {"any": [{"name": "f.1"}, {"op": "MatMul"}]}, "rule": "lrp.w_square"},
                      {"select": {"name": "fc.*"}, "rule": "lrp.z"}]}
    compiled = onnxplain.compile(two_layer[0], "lrp", rules=spec)
    rules = json.loads({p.key: p.value for p in compiled.metadata_props}["onnxplain.rules"])["lrp"]
    assert rules == {"fc0": "lrp.z", "relu0": "lrp.pass", "fc1": "lrp.w_square"}


def test_selector_epsilon_parameter_reaches_its_layer(two_layer):
    """A rule's parameter in a spec is the one used (checked numerically): epsilon 0.5 on fc1 by name."""
    model, x, (w1, b1, z1, a1), (w2, b2, z2) = two_layer
    spec = {"rules": [{"select": {"name": "fc1"}, "rule": {"name": "lrp.epsilon", "epsilon": 0.5}},
                      {"select": {"not": {"name": "fc1"}, "op": "Gemm"}, "rule": "lrp.z"}]}
    out = run(onnxplain.compile(model, "lrp", rules=spec), {"x": x})
    ra1 = ref_rule("lrp.epsilon", w2, b2, a1, seed(z2), epsilon=0.5)
    ref = ref_rule("lrp.z", w1, b1, x.astype(np.float64), ra1)
    assert rel_err(out["lrp/x"], ref) < TOL


@pytest.mark.parametrize("first_rule", ["lrp.gamma", "lrp.z"])
def test_zero_output_with_relevance(first_rule):
    """An output with z == 0 exactly that still receives relevance (lrp.flat above does not multiply by
    the activation): gamma passes nothing there (mask on the sign of z), lrp.z divides by zero -> 0."""
    w1 = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, 0.25]], np.float32)   # z1 = [x0 - x1, ...]
    w2 = np.array([[0.7, -0.2], [0.3, 0.9]], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="fc0"),
             helper.make_node("Relu", ["h"], ["a"], name="relu0"),
             helper.make_node("Gemm", ["a", "w2"], ["logits"], transB=1, name="fc1")]
    model = make_model(nodes, [("x", ["N", 3])], [("logits", ["N", 2])], {"w1": w1, "w2": w2})
    spec = {"rules": [{"select": {"position": "first"}, "rule": {"name": first_rule, "gamma": 0.5}
                       if first_rule == "lrp.gamma" else first_rule}, {"rule": "lrp.flat"}]}
    x = np.array([[1.0, 1.0, 2.0], [2.0, 2.0, -1.0], [0.5, 0.25, 1.0]], np.float32)  # z1[0] = 0, 0, 0.25
    out = run(onnxplain.compile(model, "lrp", rules=spec), {"x": x})
    xf, W1, W2 = x.astype(np.float64), w1.astype(np.float64), w2.astype(np.float64)
    a1 = np.maximum(xf @ W1.T, 0)
    R2 = seed(a1 @ W2.T)
    ra1 = ref_rule("lrp.flat", W2, np.zeros(2), a1, R2)
    assert (ra1 != 0).all()  # relevance does arrive at the z == 0 outputs
    ref = ref_rule(first_rule, W1, np.zeros(2), xf, ra1, gamma=0.5)
    assert np.isfinite(out["lrp/x"]).all()
    assert rel_err(out["lrp/x"], ref) < TOL
    # the test can tell: letting the z == 0 outputs pass (gamma: mask z >= 0; z: a 1e-6 stabilizer) differs
    if first_rule == "lrp.gamma":
        wu, wd = W1 + 0.5 * np.maximum(W1, 0), W1 + 0.5 * np.minimum(W1, 0)
        xp, xn = np.maximum(xf, 0), np.minimum(xf, 0)
        leak = (xf @ W1.T == 0) * ra1 / stab(xp @ wu.T + xn @ wd.T)  # as if z == 0 counted as positive
        ref_leak = ref + xp * (leak @ wu) + xn * (leak @ wd)
    else:
        ref_leak = xf * ((ra1 / stab(xf @ W1.T)) @ W1)
    assert rel_err(ref_leak, ref) > 1e-2


def _support_case(lower, upper, relu6, signed, seed_, n, scale=1.0):
    """``x [-> Relu] -> Gemm fc0 -> (Relu | Clip(0, 6)) -> Gemm fc1`` under ``lower`` at fc0 and ``upper`` at
    fc1: the compiled model, its input relevance and the float64 reference (``z1``, ``a1``, ``ra1``...)."""
    r = rng(seed_)
    w1, b1 = scale * r.standard_normal((6, 5)).astype(np.float32), r.standard_normal(6).astype(np.float32)
    w2, b2 = r.standard_normal((3, 6)).astype(np.float32), r.standard_normal(3).astype(np.float32)
    act = helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="relu6") if relu6 else \
        helper.make_node("Relu", ["h"], ["a"], name="relu0")
    nodes = [helper.make_node("Identity" if signed else "Relu", ["x"], ["xr"], name="in"),
             helper.make_node("Gemm", ["xr", "w1", "b1"], ["h"], transB=1, name="fc0"), act,
             helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], transB=1, name="fc1")]
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "lo": np.float32(0), "hi": np.float32(6)}
    model = make_model(nodes, [("x", ["N", 5])], [("logits", ["N", 3])], inits)
    lo = {"name": lower, "gamma": 0.5} if lower == "lrp.gamma" else {"name": lower, "epsilon": 0.25}
    up = {"name": upper, "epsilon": 0.25} if upper == "lrp.epsilon" else upper
    spec = {"rules": [{"select": {"name": "fc0"}, "rule": lo}, {"select": {"name": "fc1"}, "rule": up}]}
    compiled = onnxplain.compile(model, "lrp", rules=spec)
    x = r.standard_normal((n, 5)).astype(np.float32)
    got = run(compiled, {"x": x})["lrp/x"]
    X, W1, B1, W2, B2 = (a.astype(np.float64) for a in (x if signed else np.maximum(x, 0), w1, b1, w2, b2))
    z1 = X @ W1.T + B1
    a1 = np.clip(z1, 0, 6) if relu6 else np.maximum(z1, 0)
    ra1 = ref_rule(upper, W2, B2, a1, seed(a1 @ W2.T + B2), epsilon=0.25)
    ref = ref_rule(lower, W1, B1, X, ra1, gamma=0.5, epsilon=0.25)
    # the shortcut is taken exactly where it holds: epsilon loses its sign stabiliser (GreaterOrEqual),
    # gamma its negative group (masked with Less(z, 0))
    mark = "GreaterOrEqual" if lower == "lrp.epsilon" else "Less"
    shortcut = not [n for n in compiled.graph.node if n.name.startswith("fc0/") and n.op_type == mark]
    return dict(got=got, ref=ref, z1=z1, a1=a1, ra1=ra1, X=X, W1=W1, shortcut=shortcut, model=compiled, x=x)


@pytest.mark.parametrize("upper", ["lrp.epsilon", "lrp.flat"])
@pytest.mark.parametrize("lower", ["lrp.epsilon", "lrp.gamma"])
def test_relevance_support_below_a_relu(lower, upper):
    """Below a ReLU whose consumer scales by its input (epsilon), no relevance reaches ``z <= 0``, and the
    lower layer may divide by ``relu(z) + eps`` and drop gamma's negative group (rules/support.py); below a
    consumer that does not (flat gives relevance to zero activations) it must not.  Checked against the
    float64 formulas in both cases, with outputs of both signs and a large epsilon so that the shortcut,
    used where it does not hold, would differ."""
    c = _support_case(lower, upper, relu6=False, signed=True, seed_=7, n=8)
    assert (c["z1"] < 0).any() and (c["z1"] > 0).any()
    assert rel_err(c["got"], c["ref"]) < TOL
    assert c["shortcut"] == (upper == "lrp.epsilon")
    if upper == "lrp.flat":  # relevance does reach z <= 0 here, so the shortcut would have changed the result
        assert np.abs(c["ra1"][c["z1"] <= 0]).max() > 1e-3


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("upper", ["lrp.epsilon", "lrp.flat"])
@pytest.mark.parametrize("lower", ["lrp.epsilon", "lrp.gamma"])
def test_relevance_support_below_relu6(lower, upper, signed):
    """As above, below ``Clip(z, 0, 6)`` (ReLU6 of MobileNets): relevance passes the clip unchanged and
    vanishes where the clipped output is zero, i.e. wherever ``z <= 0``, so the shortcut holds there too,
    with ``relu(z)`` (not the clipped output, which differs above 6) as the denominator.  Pre-activations
    below 0, in (0, 6) and above 6; inputs after a ReLU (gamma's one-forward form) and signed ones."""
    c = _support_case(lower, upper, relu6=True, signed=signed, seed_=17, n=16, scale=3.0)
    z1 = c["z1"]
    assert (z1 < 0).any() and ((z1 > 0) & (z1 < 6)).any() and (z1 > 6).any()
    assert rel_err(c["got"], c["ref"]) < TOL
    assert c["shortcut"] == (upper == "lrp.epsilon")
    if upper == "lrp.epsilon" and lower == "lrp.epsilon":  # dividing by the clipped output would differ
        s_bad = c["ra1"] * (z1 > 0) / (c["a1"] + 0.25)
        assert rel_err(c["X"] * (s_bad @ c["W1"]), c["ref"]) > 1e-2


def test_clip_bounds_from_inputs_or_attributes():
    """``Clip``'s bounds as the support shortcut and ``nonnegative`` read them: inputs (opset >= 11),
    attributes (opset 6), absent, and not constant (NaN: no shortcut)."""
    from onnxplain.compiler.graph import Graph
    from onnxplain.rules.base import clip_bounds

    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["a"], name="inputs"),
             helper.make_node("Clip", ["x", "", "hi"], ["b"], name="no_min"),
             helper.make_node("Clip", ["x", "x"], ["c"], name="data_min")]
    model = make_model(nodes, [("x", ["N", 3])], [("a", ["N", 3]), ("b", ["N", 3]), ("c", ["N", 3])],
                       {"lo": np.float32(0), "hi": np.float32(6)})
    g = Graph.from_model(model)
    got = [clip_bounds(g, n) for n in model.graph.node]
    assert got[0] == (0.0, 6.0) and got[1] == (None, 6.0)
    assert np.isnan(got[2][0]) and got[2][1] is None
    old = helper.make_node("Clip", ["x"], ["d"], min=0.0, max=6.0)
    assert clip_bounds(g, old) == (0.0, 6.0)
    assert clip_bounds(g, helper.make_node("Clip", ["x"], ["e"], max=1.0)) == (None, 1.0)


@pytest.mark.parametrize("upper", ["lrp.epsilon", "lrp.flat"])
def test_relevance_support_through_max_pooling(upper, monkeypatch):
    """Conv -> ReLU -> MaxPool (winner-take-all) -> Flatten -> Gemm: with an upper rule that scales by its
    input, a zero maximum passes no relevance, so none reaches z <= 0 and the conv's gamma rule drops its
    negative group; under flat it must not.  Both agree with the same compilation without the shortcut
    (the path the Zennit goldens check), on inputs where whole pooling windows are zero."""
    import onnxplain.rules.lrp as lrp_mod

    r = rng(11)
    w = r.standard_normal((4, 2, 3, 3)).astype(np.float32)
    bias = np.full(4, -1.5, np.float32)  # many negative pre-activations: all-zero pooling windows
    w2 = r.standard_normal((3, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["z"], ["a"], name="relu"),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1, name="fc")]
    model = make_model(nodes, [("x", ["N", 2, 4, 4])], [("logits", ["N", 3])], {"w": w, "b": bias, "w2": w2})
    up = {"name": upper, "epsilon": 0.25} if upper == "lrp.epsilon" else upper
    spec = {"rules": [{"select": {"name": "conv"}, "rule": {"name": "lrp.gamma", "gamma": 0.5}},
                      {"select": {"name": "fc"}, "rule": up}]}
    x = np.abs(r.standard_normal((6, 2, 4, 4))).astype(np.float32)
    fast = onnxplain.compile(model, "lrp", rules=spec)
    monkeypatch.setattr(lrp_mod, "support_of", lambda ctx, z: None)
    slow = onnxplain.compile(model, "lrp", rules=spec)
    a = np.maximum(_conv_ref(x, w, bias), 0)
    windows = a.reshape(6, 4, 2, 2, 2, 2).max(axis=(3, 5))
    assert (windows == 0).any() and (windows > 0).any()
    got, want = run(fast, {"x": x})["lrp/x"], run(slow, {"x": x})["lrp/x"]
    assert rel_err(got, want) < TOL and np.abs(want).max() > 0
    less = [n for n in fast.graph.node if n.name.startswith("conv/") and n.op_type == "Less"]
    assert (len(less) == 0) == (upper == "lrp.epsilon")


def _conv_ref(x, w, b):
    """3x3 convolution, stride 1, padding 1, float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], w.shape[0]) + x.shape[2:])
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + x.shape[2], j:j + x.shape[3]], w[:, :, i, j])
    return out + b.reshape(1, -1, 1, 1)


# --------------------------------------------------------------------------- conservation


def _bias_free_cnn():
    m = small_cnn(seed=4, softmax=False)
    for t in m.graph.initializer:
        if t.name.startswith("b"):
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros(t.dims, np.float32), t.name))
    return m


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_conservation_bias_free(net):
    """lrp.z on a bias-free ReLU network: the input relevance sums to the explained logit."""
    if net == "mlp":
        model, x = mlp(seed=2, bias=False)[0], rng(3).standard_normal((6, 6)).astype(np.float32)
    else:
        model, x = _bias_free_cnn(), rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    compiled = onnxplain.compile(model, "lrp.z", health=True)
    for target in (None, np.arange(len(x)) % 4):
        out = run(compiled, {"x": x} if target is None else {"x": x, "target": target.astype(np.int64)})
        logits = out["logits"]
        t = logits.argmax(1) if target is None else target
        logit = logits[np.arange(len(x)), t].astype(np.float64)
        rel = out["lrp.z/x"].reshape(len(x), -1).astype(np.float64)
        # float32 rounding: each sum has ~100-200 terms of either sign; relative to the L1 mass
        scale = np.abs(rel).sum(1) + np.abs(logit)
        assert (np.abs(rel.sum(1) - logit) <= 1e-5 * scale).all(), (rel.sum(1), logit)
        assert (np.abs(out["lrp.z/relevance_sum"] - rel.sum(1)) <= 1e-5 * scale).all()
        assert np.allclose(out["explained_value"], logit, rtol=1e-6, atol=0)
        assert out["lrp.z/finite"].all()
