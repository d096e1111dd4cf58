"""LIME: reproducible with a seed, finds the one region a synthetic model looks at, equals a direct sklearn fit."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import Lasso, Ridge
from sklearn.metrics import pairwise_distances

import onnxplain
from onnxplain.agnostic.batching import ModelRunner
from onnxplain.agnostic.lime import lime
from onnxplain.compiler.errors import InputError, OnnxplainError
from nets import mlp, small_cnn
from reference import make_model, rng

BOX = (slice(None), slice(8, 16), slice(16, 24))


def box_model(size=32):
    """Class 0 = 2 * (sum of the pixels in BOX, all channels); class 1 = 0: a linear Flatten + Gemm model."""
    mask = np.zeros((3, size, size), np.float32)
    mask[BOX] = 2.0
    w = np.stack([mask.ravel(), np.zeros(mask.size, np.float32)])
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)]
    return make_model(nodes, [("x", ["N", 3, size, size])], [("y", ["N", 2])], {"w": w})


def box_image(seed=0, size=32):
    x = rng(seed).uniform(0, 1, (1, 3, size, size)).astype(np.float32)
    x[(0,) + BOX] = 0.9 + 0.05 * x[(0,) + BOX]
    return x


def test_same_seed_same_map_other_seed_other_map():
    x = box_image()
    run = lambda seed: onnxplain.Explainer(box_model(), "lime", samples=80, seed=seed,  # noqa: E731
                                           segments=20).explain(x, target=0)["lime"]
    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("segmentation", ["slic", "quickshift", "grid"])
def test_top_segment_is_the_region_the_model_looks_at(segmentation):
    x = box_image(1)
    runner = ModelRunner(box_model())
    params = dict(cell=8, alpha=1e-9) if segmentation == "grid" else {}  # grid: a near-unregularized fit
    got, (det,) = lime(runner, runner.feeds({"x": x}), "x", 0, segmentation=segmentation, segments=30,
                       samples=300, return_details=True, **params)
    labels = det.segments[0]
    top = int(det.coef.argmax())
    assert np.all(got[0] == det.coef[det.segments].astype(np.float32))  # each segment: its coefficient
    inside = np.zeros(labels.shape, bool)
    inside[BOX[1:]] = True
    assert inside[labels == top].any()  # the top segment overlaps the box
    # the model is additive over segments: segment m adds 2 * sum over box&m of (x - gray); the fit ranks alike
    gray = (x[0].min((1, 2)) + x[0].max((1, 2))) / 2
    true = [2 * float(((x[0] - gray[:, None, None]) * (inside & (labels == m))[None]).sum())
            for m in range(labels.max() + 1)]
    assert top == int(np.argmax(true))
    if segmentation == "grid":  # the box is exactly one 8x8 cell; the model is linear in the masks: exact fit
        assert set(np.unique(labels[inside])) == {top}
        np.testing.assert_allclose(det.coef, true, rtol=1e-4, atol=1e-3)
        assert det.r2 > 0.999999


def fill_reference(x, labels, fill):
    if fill == "gray":
        return np.broadcast_to(((x.min((1, 2)) + x.max((1, 2))) / 2)[:, None, None], x.shape)
    if fill == "zeros":
        return np.zeros(x.shape)
    if fill == "blur":
        return gaussian_filter(x.astype(np.float64), sigma=(0, 1.5, 1.5), mode="nearest", truncate=4.0)
    out = np.zeros(x.shape)  # mean: per segment and channel
    for c in range(x.shape[0]):
        for m in np.unique(labels[c]):
            sel = labels[c] == m
            out[c][sel] = x[c][sel].astype(np.float64).mean()
    return out


@pytest.mark.parametrize("fill, regressor, alpha", [("gray", "ridge", 1.0), ("mean", "ridge", 0.5),
                                                    ("zeros", "lasso", 0.01), ("blur", "ridge", 1.0)])
def test_coefficients_equal_a_direct_sklearn_fit(fill, regressor, alpha):
    model = small_cnn(softmax=False)
    x = rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    runner = ModelRunner(model)
    got, details = lime(runner, runner.feeds({"x": x}), "x", None, segmentation="grid", cell=2, samples=40,
                        fill=fill, blur_sigma=1.5, regressor=regressor, alpha=alpha, seed=5, max_batch=7,
                        kernel_width=0.3, return_details=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for i, det in enumerate(details):
        labels = det.segments
        expected = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 2, 0), 2, 1)  # 2x2 cells, row-major
        np.testing.assert_array_equal(labels, np.broadcast_to(expected, x[i].shape))
        assert det.masks.shape == (40, 16) and np.all(det.masks[0] == 1) and set(np.unique(det.masks)) <= {0, 1}
        fill_v = fill_reference(x[i], labels, fill)
        c = int(sess.run(None, {"x": x[i:i + 1]})[0][0].argmax())
        scores = np.array([sess.run(None, {"x": np.where(z[labels] == 1, x[i], fill_v).astype(np.float32)[None]}
                                    )[0][0, c] for z in det.masks])
        np.testing.assert_array_equal(det.scores, scores.astype(np.float64))
        d = pairwise_distances(det.masks, np.ones((1, 16)), metric="cosine").ravel()
        w = np.sqrt(np.exp(-d ** 2 / 0.3 ** 2))
        np.testing.assert_allclose(det.weights, w, rtol=1e-12)
        reg = Ridge(alpha=alpha) if regressor == "ridge" else Lasso(alpha=alpha, random_state=5)
        reg.fit(det.masks.astype(np.float64), scores.astype(np.float64), sample_weight=w)
        np.testing.assert_allclose(det.coef, reg.coef_, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got[i], reg.coef_[labels].astype(np.float32), rtol=1e-6, atol=1e-7)


def test_grid_on_tables_and_signals_and_through_the_explainer():
    model = mlp(sizes=(12, 6, 3))[0]
    x = rng(3).standard_normal((3, 12)).astype(np.float32)
    maps = onnxplain.Explainer(model, ["gradient", "lime"], samples=30, segments=4).explain(x)
    assert maps["lime"].shape == x.shape and maps["gradient"].shape == x.shape
    assert np.all(maps["lime"].reshape(3, 4, 3) == maps["lime"].reshape(3, 4, 3)[:, :, :1])  # cells of 3


def test_too_few_samples_and_bad_parameters_are_reported(tmp_path, capsys):
    x = box_image()
    with pytest.raises(InputError, match="below the number of segments"):
        onnxplain.Explainer(box_model(), "lime", samples=10, segmentation="grid", cell=4).explain(x)
    gray = make_model([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"])],
                      [("x", ["N", 1, 8, 8])], [("y", ["N", 2])], {"w": np.ones((64, 2), np.float32)})
    with pytest.raises(InputError, match="quickshift needs 3-channel"):
        onnxplain.Explainer(gray, "lime", segmentation="quickshift").explain(np.zeros((1, 1, 8, 8)))
    with pytest.raises(OnnxplainError, match="needs images"):
        onnxplain.Explainer(mlp(sizes=(12, 3))[0], "lime", segmentation="slic").explain(np.zeros((1, 12)))
    with pytest.raises(OnnxplainError, match="regressor"):
        onnxplain.Explainer(box_model(), "lime", regressor="ols")
    from onnxplain.cli import main

    src, data, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "grid.png"
    onnx.save(box_model(), src)
    np.save(data, x)
    assert main(["explain", str(src), "--data", str(data), "-m", "lime", "--param", "samples=10",
                 "--param", "lime.segmentation=grid", "--param", "cell=4", "-o", str(out)]) == 2
    assert "below the number of segments" in capsys.readouterr().err and not out.exists()
