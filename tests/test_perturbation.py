"""Perturbation analysis: curves against a direct float64 NumPy loop written from Samek et al. (2017)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

from onnxplain import Explainer
from onnxplain.apps.perturbation import (PerturbationResult, compare_methods, make_fill, parse_entries,
                                         perturbation_analysis, random_attribution, region_shape, removal_rank)
from onnxplain.cli import main
from onnxplain.compiler.errors import InputError, OnnxplainError
from reference import make_model


def image_mlp(seed=0, side=6, channels=2, hidden=10, classes=4):
    """Flatten-Gemm-Relu-Gemm-Softmax on [N, C, side, side]; returns (model, float64 forward of the logits)."""
    r = np.random.default_rng(seed)
    d = channels * side * side
    w1 = (r.standard_normal((hidden, d)) / np.sqrt(d)).astype(np.float32)
    b1 = (0.1 * r.standard_normal(hidden)).astype(np.float32)
    w2 = (r.standard_normal((classes, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (0.1 * r.standard_normal(classes)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], transB=1, name="fc2"),
             helper.make_node("Softmax", ["logits"], ["prob"], axis=1, name="softmax")]
    model = make_model(nodes, [("x", ["N", channels, side, side])], [("prob", ["N", classes])],
                       {"w1": w1, "b1": b1, "w2": w2, "b2": b2})

    def forward(x):
        h = np.maximum(np.asarray(x, np.float64).reshape(len(x), -1) @ w1.T.astype(np.float64) + b1, 0)
        return h @ w2.T.astype(np.float64) + b2
    return model, forward


def reference_curves(forward, x, maps, fill, region, steps, per_step, order="morf", how="sum", target=None):
    """f(x^(k)) per image, k = 0..steps, by explicit loops over regions (ties: lower region index first)."""
    n, shape = len(x), x.shape[1:]
    tiled = shape[-len(region):]
    counts = [-(-d // r) for d, r in zip(tiled, region)]
    regions = list(np.ndindex(*counts))
    target = forward(x).argmax(1) if target is None else target
    out = np.zeros((n, steps + 1))
    for i in range(n):
        def window(reg):
            return (Ellipsis,) + tuple(slice(g * r, min((g + 1) * r, d)) for g, r, d in zip(reg, region, tiled))
        score = [float((np.abs(maps[i][window(reg)]) if how == "abs" else maps[i][window(reg)]).astype(np.float64).sum())
                 for reg in regions]
        sign = -1 if order == "morf" else 1
        ranked = sorted(range(len(regions)), key=lambda j: (sign * score[j], j))
        for k in range(steps + 1):
            xp = np.array(x[i], np.float64)
            for j in ranked[:k * per_step]:
                xp[window(regions[j])] = fill[i][window(regions[j])]
            out[i, k] = forward(xp[None])[0, target[i]]
    return out


@pytest.fixture(scope="module")
def setup():
    model, forward = image_mlp()
    r = np.random.default_rng(7)
    x = r.random((5, 2, 6, 6)).astype(np.float32)
    maps = {"a": r.standard_normal(x.shape).astype(np.float32), "b": r.standard_normal(x.shape).astype(np.float32)}
    return model, forward, x, maps


@pytest.mark.parametrize("fill,region,per_step,order", [("noise", (2, 2), 1, "morf"), ("mean", (4, 4), 1, "lerf"),
                                                         ("blur", (3, 2), 2, "morf"), ("constant", 2, 3, "morf")])
def test_curves_equal_direct_loop(setup, fill, region, per_step, order):
    model, forward, x, maps = setup
    res = perturbation_analysis(model, x, maps, region=region, per_step=per_step, fill=fill, fill_value=0.3,
                                order=order, seed=3, value_range=(0.0, 1.0), batch_size=7, progress=False)
    reg = region_shape(x.shape[1:], region)
    fill_arr = make_fill(x, fill, value_range=(0.0, 1.0), value=0.3, seed=3, sigma=max(reg) / 2)
    steps = res.settings["steps"]
    for label in ("a", "b", "random"):
        ref = reference_curves(forward, x, res_maps(maps, x, label), fill_arr, reg, steps, per_step, order)
        np.testing.assert_allclose(res.scores[label], ref, rtol=1e-5, atol=1e-5)
        # AOPC = 1/(L+1) sum_k (f(x0) - f(xk)), averaged over images
        assert res.aopc[label] == pytest.approx(np.mean([np.mean(ref[i, 0] - ref[i]) for i in range(len(x))]),
                                                rel=1e-5, abs=1e-6)


def res_maps(maps, x, label):
    return maps[label] if label in maps else random_attribution(x.shape, 3)


def test_fills_from_their_formulas():
    r = np.random.default_rng(0)
    x = r.random((3, 2, 7, 5))
    from scipy.ndimage import gaussian_filter
    blur = make_fill(x, "blur", sigma=1.5)
    for i in range(3):
        for c in range(2):
            np.testing.assert_allclose(blur[i, c], gaussian_filter(x[i, c], 1.5, mode="mirror", truncate=3.0), atol=1e-12)
    np.testing.assert_allclose(make_fill(x, "mean")[1, 1], np.full((7, 5), x[1, 1].mean()))
    lo, hi = np.array([-1.0, 2.0]), np.array([0.0, 5.0])
    noise = make_fill(x, "noise", value_range=(lo, hi), seed=9)
    assert noise[:, 0].min() >= -1 and noise[:, 0].max() < 0 and noise[:, 1].min() >= 2 and noise[:, 1].max() < 5
    # the noise of one sample depends on its index and the seed only, not on the batch
    np.testing.assert_array_equal(make_fill(x[2:], "noise", value_range=(lo, hi), seed=9, index=[2])[0], noise[2])
    expect = lo[:, None, None] + (hi - lo)[:, None, None] * np.random.default_rng([9, 1]).random((2, 7, 5))
    np.testing.assert_allclose(noise[1], expect)


def test_aopc_formula_on_given_scores():
    s = np.array([[4.0, 3.0, 1.0, 0.0], [2.0, 2.0, 1.0, -1.0]])
    res = PerturbationResult({"m": s, "random": s * 0.5}, np.arange(4), 3, np.array([0, 1]), {"order": "morf"})
    assert res.aopc["m"] == pytest.approx(((0 + 1 + 3 + 4) / 4 + (0 + 0 + 1 + 3) / 4) / 2)
    assert res.aopc["random"] == pytest.approx(res.aopc["m"] / 2)
    assert [m for m, _ in res.ranking()] == ["m", "random"]
    d = np.array([(0 + 1 + 3 + 4) / 8, (0 + 0 + 1 + 3) / 8])       # per-image AOPC(m) - AOPC(random)
    assert res.versus("m") == pytest.approx((d.mean(), d.std(ddof=1) / np.sqrt(2)))
    assert "| +0.750 | 0.250 |" in res.table() and "+0.750    0.250" in res.table(markdown=False)
    json.dumps(res.to_dict())


def test_random_baseline_reproducible(setup):
    model, _, x, maps = setup
    kw = dict(region=2, steps=5, progress=False)
    r1 = perturbation_analysis(model, x, {}, seed=11, **kw)
    r2 = perturbation_analysis(model, x, {}, seed=11, **kw)
    r3 = perturbation_analysis(model, x, {}, seed=12, **kw)
    np.testing.assert_array_equal(r1.scores["random"], r2.scores["random"])
    assert not np.allclose(r1.scores["random"], r3.scores["random"])
    np.testing.assert_array_equal(random_attribution((2, 3), 5), np.random.default_rng(5).random((2, 3)))


def test_ties_are_broken_by_region_index(setup):
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    np.testing.assert_array_equal(removal_rank(scores, "morf"), [[3, 0, 1, 4, 2]])
    np.testing.assert_array_equal(removal_rank(scores, "lerf"), [[1, 2, 3, 0, 4]])
    model, forward, x, _ = setup
    flat = {"const": np.ones_like(x)}            # every region ties: raster order
    res = perturbation_analysis(model, x, flat, region=3, fill="zero", random_baseline=False, progress=False)
    ref = reference_curves(forward, x, flat["const"], np.zeros_like(x), (3, 3), 4, 1)
    np.testing.assert_allclose(res.scores["const"], ref, rtol=1e-5, atol=1e-5)


def test_one_dimensional_windows_and_abs_scores():
    from nets import mlp
    model, layers = mlp(seed=3, sizes=(7, 9, 3))
    (w1, b1), (w2, b2) = layers

    def forward(x):
        return np.maximum(np.asarray(x, np.float64) @ w1.T.astype(np.float64) + b1, 0) @ w2.T.astype(np.float64) + b2
    r = np.random.default_rng(1)
    x = r.standard_normal((4, 7)).astype(np.float32)
    maps = {"gradient": r.standard_normal(x.shape)}
    res = perturbation_analysis(model, x, maps, region=(3,), fill="zero", random_baseline=False, progress=False)
    assert res.settings["region_score"] == {"gradient": "abs"} and res.count == 3
    ref = reference_curves(forward, x, maps["gradient"], np.zeros_like(x), (3,), 3, 1, how="abs")
    np.testing.assert_allclose(res.scores["gradient"], ref, rtol=1e-5, atol=1e-5)


def test_method_entries_with_own_parameters(setup):
    model, _, x, _ = setup
    entries = parse_entries(["gradient", "integrated_gradients:reference=white:steps=4",
                             ("ig gray", "integrated_gradients", {"reference": "gray"})], {"steps": 4, "high": 2})
    assert entries[1] == ("integrated_gradients:reference=white:steps=4", "integrated_gradients",
                          {"steps": "4", "high": 2, "reference": "white"})
    res = compare_methods(model, x, entries, steps=3, region=3, progress=False)
    assert res.labels == ["gradient", "integrated_gradients:reference=white:steps=4", "ig gray", "random"]
    target = res.target
    for label, ref in (("integrated_gradients:reference=white:steps=4", "white"), ("ig gray", "gray")):
        maps = Explainer(model, {"integrated_gradients": {"reference": ref, "steps": 4, "high": 2}}).explain(x, target)
        direct = perturbation_analysis(model, x, {label: maps["integrated_gradients"]}, target, steps=3, region=3,
                                       random_baseline=False, progress=False)
        np.testing.assert_allclose(res.scores[label], direct.scores[label], rtol=1e-6)
    assert not np.allclose(res.scores["ig gray"], res.scores["integrated_gradients:reference=white:steps=4"])


def test_bad_input_is_reported(setup):
    model, _, x, maps = setup
    with pytest.raises(InputError, match="maps of shape"):
        perturbation_analysis(model, x, {"a": maps["a"][:2]})
    with pytest.raises(InputError, match="steps must be"):
        perturbation_analysis(model, x, maps, region=3, steps=5)
    with pytest.raises(InputError, match="larger than"):
        perturbation_analysis(model, x, maps, region=7)
    with pytest.raises(InputError, match="unknown fill"):
        perturbation_analysis(model, x, maps, fill="sparkles")
    with pytest.raises(InputError) as info:
        parse_entries(["gradient:steps", "nope"], {"zzz": 1})
    assert "key=value" in str(info.value) and "unknown method 'nope'" in str(info.value) and "zzz" in str(info.value)


def test_cli_writes_curves_json_and_markdown(setup, tmp_path, capsys):
    model, _, x, _ = setup
    import onnx
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", images=x)
    out = tmp_path / "curves.png"
    args = ["perturb", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "-m", "gradient",
            "-m", "integrated_gradients:reference=gray", "--param", "steps=4", "--region", "3x3", "--fill", "mean",
            "--seed", "2", "-o", str(out)]
    assert main(args) == 0
    data = json.loads((tmp_path / "curves.json").read_text())
    direct = compare_methods(model, x, ["gradient", "integrated_gradients:reference=gray"], params={"steps": "4"},
                             region=(3, 3), fill="mean", seed=2, progress=False)
    for label, value in direct.aopc.items():
        assert data["aopc"][label] == pytest.approx(value, rel=1e-6)
    assert "| rank | method |" in (tmp_path / "curves.md").read_text()
    from PIL import Image
    assert Image.open(out).size == (820, 440)
    bad = tmp_path / "bad.png"
    assert main(args[:-1] + [str(bad), "--fill", "glitter"]) == 2
    assert main(["perturb", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "nothing.npz"), "-o", str(bad)]) == 2
    assert not bad.exists() and not list(tmp_path.glob(".onnxplain-*"))
    assert "error" in capsys.readouterr().err
    assert issubclass(InputError, OnnxplainError)
