"""PatternNet / PatternAttribution: the fit against float64 NumPy written from the formula, the
compiled backward passes against float64 dense-matrix references, the signal-recovery toy of
Kindermans et al. (2018), and bad input.

References (independent of onnxplain's fit and emitter):

* activations: a float64 forward pass with dense matrices built by explicit loops over the
  convolution geometry (``conv_matrix``);
* patterns: per neuron, over its active samples (``z > 0``; every sample for ``linear``), the
  centred covariance ``cov = mean((x - mean x)(y - mean y))`` and ``a = cov / (w . cov)``; conv
  patches from ``numpy.lib.stride_tricks.sliding_window_view``;
* backward: ``r_in = r_out @ M_A`` with ``M_A`` the dense matrix of the layer with its weight
  replaced by the pattern (PatternNet) or by ``W * A`` (PatternAttribution), gated by the forward
  ReLU masks; seed = the explained logit times the one-hot target.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper

import onnxplain
from nets import mlp
from onnxplain.cli import main
from onnxplain.compiler.errors import CompileError, InputError
from onnxplain.patterns import fit_patterns
from onnxplain.rules.pattern import load_patterns, save_patterns
from reference import make_model, rel_err, rng, run

# float32 activations and maps against float64 references; a wrong mask, mean, normalisation or
# layout gives errors of 1e-2 and more
PAT_TOL = 1e-4
MAP_TOL = 1e-5


# --------------------------------------------------------------------------- references


def conv_matrix(k, in_shape, stride=1, pad=1, group=1, dil=1):
    """Dense [out_dim, in_dim] matrix of a 2-D convolution (explicit loops over the geometry)."""
    co, cig, kh, kw = k.shape
    c, h, w = in_shape
    ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
    m = np.zeros((co, ho, wo, c, h, w))
    cog = co // group
    for o in range(co):
        for i in range(cig):
            ci = (o // cog) * cig + i
            for a in range(kh):
                for b in range(kw):
                    for p in range(ho):
                        for q in range(wo):
                            hh, ww = p * stride - pad + a * dil, q * stride - pad + b * dil
                            if 0 <= hh < h and 0 <= ww < w:
                                m[o, p, q, ci, hh, ww] += k[o, i, a, b]
    return m.reshape(co * ho * wo, c * h * w), (co, ho, wo)


def conv_patches(x, kshape, stride, pad, group, dil, g):
    """[N*ho*wo, cig*kh*kw] receptive fields of group ``g`` (sliding windows)."""
    co, cig, kh, kw = kshape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, ((kh - 1) * dil + 1, (kw - 1) * dil + 1), axis=(2, 3))
    win = win[:, g * cig:(g + 1) * cig, ::stride, ::stride, ::dil, ::dil]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, cig * kh * kw)


def ref_pattern(xs, ys, zs, w, estimator):
    """a = cov / (w . cov) per neuron; xs [S, K], ys/zs [S, C], w [K, C] (centred covariance)."""
    a = np.zeros_like(w)
    for c in range(w.shape[1]):
        sel = zs[:, c] > 0 if estimator == "relu" else np.ones(len(zs), bool)
        if not sel.any():
            continue
        xc, yc = xs[sel] - xs[sel].mean(0), ys[sel, c] - ys[sel, c].mean()
        cov = (xc * yc[:, None]).mean(0)
        a[:, c] = cov / (w[:, c] @ cov)
    return a


def cos(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- (a) signal + distractor


def blob(cy, cx, s):
    yy, xx = np.mgrid[0:8, 0:8]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).ravel()


def toy_linear():
    """x = s a_s + d a_d on 8x8 inputs, w orthogonal to a_d with w . a_s = 1 (Kindermans et al., Fig. 2)."""
    a_s, a_d = blob(3, 3, 1.5), blob(4, 4, 2.5)
    u = a_d / np.linalg.norm(a_d)
    w = a_s - (a_s @ u) * u
    w = w / (w @ a_s)
    r = rng(7)
    s, d = r.standard_normal(3000), 2.0 * r.standard_normal(3000)
    x = (s[:, None] * a_s + d[:, None] * a_d).reshape(-1, 1, 8, 8).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="filter")]
    model = make_model(nodes, [("x", ["N", 1, 8, 8])], [("y", ["N", 1])], {"w": w[None].astype(np.float32)})
    return model, x, a_s, w


@pytest.mark.parametrize("estimator", ["linear", "relu"])
def test_patternnet_recovers_signal_direction(estimator):
    model, x, a_s, w = toy_linear()
    pats = fit_patterns(model, x[:2000], estimator=estimator, progress=False)
    fitted = cos(pats["filter"], a_s)
    maps = onnxplain.Explainer(model, ["pattern.net", "gradient"], patterns=pats).explain(x[2000:2050])
    net = min(abs(cos(m, a_s)) for m in maps["pattern.net"])
    grad = max(abs(cos(m, a_s)) for m in maps["gradient"])
    print(f"\n[{estimator}] cos(pattern, a_s) = {fitted:.5f}; pattern.net maps: min |cos| = {net:.5f}; "
          f"gradient maps: max |cos| = {grad:.5f} (cos(w, a_s) = {cos(w, a_s):.5f})")
    assert fitted >= 0.99 and net >= 0.99
    assert grad < 0.9 and abs(grad - abs(cos(w, a_s))) < 1e-5  # the gradient is the filter w
    assert abs(float(np.ravel(pats["filter"]) @ w) - 1) < 1e-4  # w^T a = 1


# --------------------------------------------------------------------------- (b) MLP


def mlp_reference(layers, x, estimator):
    """Float64 patterns [out, in] of every layer of a Gemm(transB=1)-ReLU MLP."""
    h, pats = x.astype(np.float64), []
    for i, (wt, b) in enumerate(layers):
        w = wt.astype(np.float64).T
        y = h @ w
        z = y + b
        pats.append(ref_pattern(h, y, z, w, estimator).T)
        h = np.maximum(z, 0) if i < len(layers) - 1 else z
    return pats


def mlp_backward(layers, mats, x, target):
    """Seed logit * one-hot; r_in = r @ M (M [out, in]), ReLU masks of the float64 forward pass."""
    h, zs = x.astype(np.float64), []
    for i, (wt, b) in enumerate(layers):
        z = h @ wt.astype(np.float64).T + b
        zs.append(z)
        h = np.maximum(z, 0)
    r = np.zeros_like(zs[-1])
    r[np.arange(len(x)), target] = zs[-1][np.arange(len(x)), target]
    for i in range(len(layers) - 1, -1, -1):
        r = r @ mats[i].astype(np.float64)
        if i > 0:
            r = r * (zs[i - 1] > 0)
    return r


@pytest.mark.parametrize("estimator", ["relu", "linear"])
def test_mlp_patterns_and_backward(estimator):
    model, layers = mlp(3, sizes=(6, 8, 7, 4))
    x = rng(1).standard_normal((600, 6)).astype(np.float32)
    pats = fit_patterns(model, x, estimator=estimator, batch_size=128, progress=False)
    ref = mlp_reference(layers, x, estimator)
    for i, a in enumerate(ref):
        assert pats[f"fc{i}"].shape == layers[i][0].shape
        assert rel_err(pats[f"fc{i}"], a) < PAT_TOL, (i, rel_err(pats[f"fc{i}"], a))
    xe = rng(2).standard_normal((7, 6)).astype(np.float32)
    target = np.array([0, 1, 2, 3, 0, 1, 2])
    out = onnxplain.Explainer(model, ["pattern.net", "pattern.attribution"], patterns=pats).explain(xe, target)
    a = [pats[f"fc{i}"] for i in range(3)]
    net = mlp_backward(layers, a, xe, target)
    att = mlp_backward(layers, [ai.astype(np.float64) * wt for ai, (wt, _) in zip(a, layers)], xe, target)
    assert rel_err(out["pattern.net"], net) < MAP_TOL
    assert rel_err(out["pattern.attribution"], att) < MAP_TOL


# --------------------------------------------------------------------------- (b) CNN


def small_cnn():
    """Conv(pad 1) - Relu - Conv(group 2, stride 2, dilation 2, pad 2) - Relu - Flatten - MatMul+Add -
    Relu - Gemm(transB=0, alpha=0.5), input [N, 2, 6, 6]."""
    r = rng(11)
    w = lambda *s: (r.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    inits = {"w1": w(4, 2, 3, 3), "b1": (0.1 * r.standard_normal(4)).astype(np.float32),
             "w2": w(6, 2, 3, 3), "b2": (0.1 * r.standard_normal(6)).astype(np.float32),
             "w3": (r.standard_normal((54, 8)) / np.sqrt(54)).astype(np.float32), "b3": (0.1 * r.standard_normal(8)).astype(np.float32),
             "w4": (r.standard_normal((8, 5)) / np.sqrt(8)).astype(np.float32), "b4": (0.1 * r.standard_normal(5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[2, 2, 2, 2], strides=[2, 2],
                              dilations=[2, 2], group=2, name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w3"], ["m3"], name="fc1"),
             helper.make_node("Add", ["m3", "b3"], ["h3"], name="fc1_bias"),
             helper.make_node("Relu", ["h3"], ["r3"], name="relu3"),
             helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], alpha=0.5, name="fc2")]
    return make_model(nodes, [("x", ["N", 2, 6, 6])], [("logits", ["N", 5])], inits), inits


CONV = {"conv1": dict(stride=1, pad=1, group=1, dil=1), "conv2": dict(stride=2, pad=2, group=2, dil=2)}


def cnn_forward(p, x):
    """Float64 forward: per layer (input, y without bias, z with bias) and the dense conv matrices."""
    n = len(x)
    m1, s1 = conv_matrix(p["w1"].astype(np.float64), (2, 6, 6), **CONV["conv1"])
    z1 = (x.reshape(n, -1) @ m1.T).reshape((n,) + s1) + p["b1"][:, None, None]
    r1 = np.maximum(z1, 0)
    m2, s2 = conv_matrix(p["w2"].astype(np.float64), s1, **CONV["conv2"])
    z2 = (r1.reshape(n, -1) @ m2.T).reshape((n,) + s2) + p["b2"][:, None, None]
    r2 = np.maximum(z2, 0).reshape(n, -1)
    z3 = r2 @ p["w3"] + p["b3"]
    r3 = np.maximum(z3, 0)
    z4 = 0.5 * r3 @ p["w4"] + p["b4"]
    return {"conv1": (x, z1), "conv2": (r1, z2), "fc1": (r2, z3), "fc2": (r3, z4)}


def cnn_reference_patterns(p, x, estimator="relu"):
    acts, out = cnn_forward(p, x.astype(np.float64)), {}
    for name, key in (("conv1", "w1"), ("conv2", "w2")):
        xin, z = acts[name]
        k = p[key].astype(np.float64)
        geo = CONV[name]
        pat = np.zeros_like(k)
        cog = k.shape[0] // geo["group"]
        for g in range(geo["group"]):
            xs = conv_patches(xin, k.shape, geo["stride"], geo["pad"], geo["group"], geo["dil"], g)
            wg = k[g * cog:(g + 1) * cog].reshape(cog, -1).T
            zs = z[:, g * cog:(g + 1) * cog].transpose(0, 2, 3, 1).reshape(-1, cog)
            pat[g * cog:(g + 1) * cog] = ref_pattern(xs, xs @ wg, zs, wg, estimator).T.reshape(cog, *k.shape[1:])
        out[name] = pat
    xin, z = acts["fc1"]
    out["fc1"] = ref_pattern(xin, xin @ p["w3"], z, p["w3"].astype(np.float64), estimator)
    xin, z = acts["fc2"]
    w4 = 0.5 * p["w4"].astype(np.float64)
    out["fc2"] = ref_pattern(xin, xin @ w4, z, w4, estimator)
    return out


def cnn_backward(p, kernels, x, target):
    """Backward with kernels (conv1, conv2, fc1 [in, out], fc2 [in, out] incl. alpha) through ReLU masks."""
    acts = cnn_forward(p, x.astype(np.float64))
    n = len(x)
    z4 = acts["fc2"][1]
    r = np.zeros_like(z4)
    r[np.arange(n), target] = z4[np.arange(n), target]
    r = (r @ kernels["fc2"].T) * (acts["fc1"][1] > 0)
    r = (r @ kernels["fc1"].T) * (acts["conv2"][1].reshape(n, -1) > 0)
    m2, _ = conv_matrix(kernels["conv2"], (4, 6, 6), **CONV["conv2"])
    r = (r @ m2) * (acts["conv1"][1].reshape(n, -1) > 0)
    m1, _ = conv_matrix(kernels["conv1"], (2, 6, 6), **CONV["conv1"])
    return (r @ m1).reshape(x.shape)


def test_cnn_patterns_and_backward():
    model, p = small_cnn()
    x = rng(5).standard_normal((300, 2, 6, 6)).astype(np.float32)
    pats = fit_patterns(model, x, batch_size=64, progress=False)
    ref = cnn_reference_patterns(p, x)
    assert sorted(pats) == ["conv1", "conv2", "fc1", "fc2"]
    for name, a in ref.items():
        assert pats[name].shape == a.shape
        assert rel_err(pats[name], a) < PAT_TOL, (name, rel_err(pats[name], a))
    xe = rng(6).standard_normal((4, 2, 6, 6)).astype(np.float32)
    target = np.array([4, 3, 2, 1])
    out = onnxplain.Explainer(model, ["pattern.net", "pattern.attribution"], patterns=pats).explain(xe, target)
    a = {k: pats[k].astype(np.float64) for k in pats}
    net = cnn_backward(p, {"conv1": a["conv1"], "conv2": a["conv2"], "fc1": a["fc1"], "fc2": a["fc2"]}, xe, target)
    w = {"conv1": p["w1"], "conv2": p["w2"], "fc1": p["w3"], "fc2": 0.5 * p["w4"]}
    att = cnn_backward(p, {k: a[k] * w[k] for k in a}, xe, target)
    assert rel_err(out["pattern.net"], net) < MAP_TOL
    assert rel_err(out["pattern.attribution"], att) < MAP_TOL


def test_npz_round_trip_and_cli(tmp_path):
    model, layers = mlp(3, sizes=(6, 8, 7, 4))
    mpath, dpath, ppath, opath = (str(tmp_path / f) for f in ("m.onnx", "d.npz", "p.npz", "c.onnx"))
    onnx.save(model, mpath)
    x = rng(1).standard_normal((200, 6)).astype(np.float32)
    np.savez(dpath, x=x)
    assert main(["fit-patterns", mpath, "--data", dpath, "-o", ppath, "--batch-size", "50", "--quiet"]) == 0
    direct = fit_patterns(model, x, progress=False)
    loaded = load_patterns(ppath)
    assert sorted(loaded) == sorted(direct)
    for k in direct:
        np.testing.assert_array_equal(loaded[k], direct[k])
    assert loaded.meta["samples"] == 200 and loaded.meta["estimator"] == "relu"
    assert main(["compile", mpath, "-m", "pattern.attribution", "--patterns", ppath, "-o", opath]) == 0
    xe = x[:3]
    got = run(onnx.load(opath), {"x": xe})["pattern.attribution/x"]
    want = onnxplain.Explainer(model, "pattern.attribution", patterns=direct).explain(xe)["pattern.attribution"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert main(["check", mpath, "-m", "pattern.net", "--patterns", ppath]) == 0
    both = onnxplain.compile(model, ["pattern.net", "pattern.attribution"], patterns=ppath)
    baked = {t.name: onnx.numpy_helper.to_array(t) for t in both.graph.initializer if t.name.endswith("/pattern")}
    assert sorted(baked) == ["fc0/pattern", "fc1/pattern", "fc2/pattern"]  # once, shared by both methods
    for k, v in baked.items():
        np.testing.assert_array_equal(v, direct[k.split("/")[0]])


# --------------------------------------------------------------------------- (c) bad input


def _files(folder):
    return sorted(os.listdir(folder))


def test_wrong_data_shape(tmp_path, capsys):
    model, _ = mlp(3, sizes=(6, 8, 7, 4))
    mpath = str(tmp_path / "m.onnx")
    onnx.save(model, mpath)
    with pytest.raises(InputError, match=r"expected shape \[N, 6\], got \(10, 7\)"):
        fit_patterns(model, np.zeros((10, 7), np.float32), progress=False)
    with pytest.raises(InputError, match="expected 2 dimensions"):
        fit_patterns(model, np.zeros((10, 6, 1), np.float32), progress=False)
    bad = np.zeros((10, 6), np.float32)
    bad[3, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_patterns(model, bad, progress=False)
    with pytest.raises(InputError, match="empty"):
        fit_patterns(model, np.zeros((0, 6), np.float32), progress=False)
    np.save(tmp_path / "bad.npy", np.zeros((10, 7), np.float32))
    before = _files(tmp_path)
    code = main(["fit-patterns", mpath, "--data", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "p.npz")])
    assert code == 2 and _files(tmp_path) == before  # no partial output, no temporary file left
    assert "expected shape [N, 6]" in capsys.readouterr().err


def test_patterns_of_another_model(tmp_path, capsys):
    model, _ = mlp(3, sizes=(6, 8, 7, 4))
    x = rng(1).standard_normal((100, 6)).astype(np.float32)
    pats = fit_patterns(model, x, progress=False)
    other, _ = mlp(4, sizes=(6, 8, 7, 4))  # same names and shapes, other weights
    with pytest.raises(CompileError) as e:
        onnxplain.compile(other, "pattern.net", patterns=pats)
    assert len(e.value.problems) == 3 and "fitted for other weights" in str(e.value)
    wider, _ = mlp(3, sizes=(6, 9, 7, 4))
    with pytest.raises(CompileError) as e:
        onnxplain.compile(wider, "pattern.attribution", patterns=pats)
    text = str(e.value)
    assert "node 'fc0'" in text and "[8, 6] differs from the weight's [9, 6]" in text
    assert "node 'fc1'" in text and "[7, 8] differs from the weight's [7, 9]" in text
    cnn, _ = small_cnn()
    with pytest.raises(CompileError) as e:
        onnxplain.compile(cnn, "pattern.net", patterns=pats)
    text = str(e.value)
    assert "not linear layers of this model: fc0" in text and "node 'conv1'" in text
    mpath, ppath, opath = str(tmp_path / "w.onnx"), str(tmp_path / "p.npz"), str(tmp_path / "c.onnx")
    onnx.save(wider, mpath)
    save_patterns(pats, ppath)
    before = _files(tmp_path)
    assert main(["compile", mpath, "-m", "pattern.net", "--patterns", ppath, "-o", opath]) == 2
    assert _files(tmp_path) == before
    assert "differs from the weight's" in capsys.readouterr().err


def test_missing_and_unusable_patterns(tmp_path):
    model, _ = mlp(3, sizes=(6, 8, 7, 4))
    x = rng(1).standard_normal((100, 6)).astype(np.float32)
    pats = dict(fit_patterns(model, x, progress=False))
    partial = {k: v for k, v in pats.items() if k != "fc1"}
    with pytest.raises(CompileError, match=r"node 'fc1' \(Gemm\): dict has no pattern for this node"):
        onnxplain.compile(model, "pattern.net", patterns=partial)
    with pytest.raises(CompileError, match="needs fitted patterns"):
        onnxplain.compile(model, "pattern.attribution")
    with pytest.raises(CompileError, match="no such patterns file"):
        onnxplain.compile(model, "pattern.net", patterns=str(tmp_path / "absent.npz"))
    nan = dict(pats, fc2=np.full_like(pats["fc2"], np.nan))
    with pytest.raises(CompileError, match="non-finite patterns for fc2"):
        onnxplain.compile(model, "pattern.net", patterns=nan)
    rows, problems = onnxplain.check(model, "pattern.net", patterns=partial)
    assert problems[0].node == "fc1" and "no pattern" in problems[0].message


def test_unsupported_layer_is_reported():
    w = rng(3).standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")]
    model = make_model(nodes, [("x", ["N", 2, 4, 4])], [("y", ["N", 3, 6, 6])], {"w": w})
    with pytest.raises(CompileError, match=r"node 'up' \(ConvTranspose\).*not implemented"):
        fit_patterns(model, np.zeros((2, 2, 4, 4), np.float32), progress=False)
