"""Occlusion: equal to a direct loop over windows (plain ONNX Runtime calls, a float64 model), shapes, errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.agnostic.batching import ModelRunner
from onnxplain.agnostic.occlusion import occlusion, windows
from onnxplain.compiler.errors import InputError, OnnxplainError
from nets import mlp, small_cnn
from reference import make_model, rng


def signal_net(seed=0, length=11):
    """Conv1d(2->3, k=3) - Relu - Flatten - Gemm(4) on [N, 2, L]."""
    r = np.random.default_rng(seed)
    inits = {"w": r.standard_normal((3, 2, 3)).astype(np.float32), "b": r.standard_normal(3).astype(np.float32),
             "v": r.standard_normal((4, 3 * (length - 2))).astype(np.float32), "c": np.zeros(4, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Flatten", ["a"], ["f"]), helper.make_node("Gemm", ["f", "v", "c"], ["y"], transB=1)]
    return make_model(nodes, [("x", ["N", 2, length])], [("y", ["N", 4])], inits)


def direct_loop(model, x, patch, stride, ref, target=None):
    """Independent reference: one plain ORT call per (sample, window); windows enumerated row-major."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name, out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    spatial = list(range(1, x.ndim)) if x.ndim == 2 else list(range(2, x.ndim))
    starts = []
    for a, p, s in zip(spatial, patch, stride):
        n = x.shape[a]
        starts.append([k * s for k in range(math.ceil((n - p) / s) + 1)])
    result, all_scores = np.zeros(x.shape, np.float64), []
    for i in range(len(x)):
        base = sess.run([out], {name: x[i:i + 1]})[0][0]
        c = int(base.argmax()) if target is None else target
        acc, cnt, scores = np.zeros(x.shape[1:]), np.zeros(x.shape[1:]), []
        for corner in itertools.product(*starts):
            sl = (slice(None),) * (spatial[0] - 1) + tuple(slice(k, k + p) for k, p in zip(corner, patch))
            xo = x[i].copy()
            xo[sl] = np.broadcast_to(ref, x.shape)[i][sl]
            s = sess.run([out], {name: xo[None]})[0][0, c]
            scores.append(s)
            acc[sl] += np.float64(base[c]) - np.float64(s)
            cnt[sl] += 1
        result[i] = acc / cnt
        all_scores.append(scores)
    return result.astype(x.dtype), np.array(all_scores)


CASES = [  # model, input shape, patch, stride: 4-D / 3-D (1-D signal) / 2-D (table), overlap and partial windows
    (lambda: small_cnn(softmax=False), (2, 3, 8, 8), (3, 3), (3, 3)),
    (lambda: small_cnn(softmax=False), (2, 3, 8, 8), (4, 3), (2, 1)),
    (lambda: small_cnn(softmax=False), (1, 3, 8, 8), (8, 8), (8, 8)),
    (lambda: signal_net(), (3, 2, 11), (4,), (3,)),
    (lambda: signal_net(), (2, 2, 11), (2,), (2,)),
    (lambda: mlp(sizes=(6, 8, 5))[0], (4, 6), (2,), (1,)),
    (lambda: mlp(sizes=(6, 8, 5))[0], (3, 6), (4,), (4,)),
]


@pytest.mark.parametrize("make, shape, patch, stride", CASES)
def test_equals_direct_loop_of_onnxruntime_calls_exactly(make, shape, patch, stride):
    model = make()
    x = rng(len(shape)).standard_normal(shape).astype(np.float32)
    runner = ModelRunner(model)
    got, (f0, scores, cls) = occlusion(runner, runner.feeds({"x": x}), "x", patch=patch, stride=stride,
                                       reference=0.25, max_batch=5, return_scores=True)
    want, want_scores = direct_loop(model, x, patch, stride, np.float32(0.25))
    assert got.shape == x.shape and got.dtype == np.float32
    np.testing.assert_array_equal(scores, want_scores)  # batched ORT calls give the same float32 scores
    np.testing.assert_array_equal(got, want)


def linear64(w, b):
    """f(x) = W flatten(x) + b in float64 ONNX (Flatten + Gemm)."""
    shape = ["N"] + [int(d) for d in w.shape[1:]]
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "lin", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", w.shape[0]])],
                          [onnx.numpy_helper.from_array(w.reshape(w.shape[0], -1), "w"),
                           onnx.numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("shape, patch, stride", [((2, 2, 7, 9), (3, 4), (2, 3)), ((2, 3, 10), (4,), (4,)),
                                                  ((3, 9), (2,), (2,))])
def test_float64_model_matches_the_formula(shape, patch, stride):
    r = rng(7)
    w = r.standard_normal((3,) + shape[1:])
    b = r.standard_normal(3)
    x = r.standard_normal(shape)
    runner = ModelRunner(linear64(w, b))
    got = occlusion(runner, runner.feeds({"x": x}), "x", target=1, patch=patch, stride=stride, reference="mean")
    assert got.dtype == np.float64
    # the formula: window drop = sum over the window of W[c] * (x - r), r = per-sample (per-channel) mean
    axes = tuple(range(1, x.ndim)) if x.ndim == 2 else tuple(range(2, x.ndim))
    ref = x.mean(axis=axes, keepdims=True)
    contrib = w[1][None] * (x - ref)
    want = np.zeros_like(x)
    cnt = np.zeros(x.shape[1:])
    n_axes = [x.shape[a] for a in axes]
    ranges = [range(0, max(n - p, 0) + s, s) for n, p, s in zip(n_axes, patch, stride)]
    for corner in itertools.product(*ranges):
        sl = (slice(None),) * (axes[0] - 1) + tuple(slice(k, k + p) for k, p in zip(corner, patch))
        cnt[sl] += 1
        for i in range(len(x)):
            want[i][sl] += contrib[i][sl].sum()
    np.testing.assert_allclose(got, want / cnt, rtol=1e-12, atol=1e-12)


def test_window_geometry_last_window_cut_off_as_captum():
    _, w = windows((1, 10), 4, 3)
    assert [s[0] for s in w] == [slice(0, 4), slice(3, 7), slice(6, 10)]
    _, w = windows((1, 11), 4, 4)  # ceil((11-4)/4)+1 = 3 windows, the last cut off to 3 elements
    assert [s[0] for s in w] == [slice(0, 4), slice(4, 8), slice(8, 11)]
    axes, w = windows((1, 3, 5, 4), (5, 2), None)
    assert axes == (2, 3) and [s[1:] for s in w] == [(slice(0, 5), slice(0, 2)), (slice(0, 5), slice(2, 4))]
    axes, w = windows((1, 4, 6, 3), (2, 3, 3), (2, 3, 3))  # one entry per non-batch axis: channels windowed too
    assert axes == (1, 2, 3) and len(w) == 2 * 2 * 1


def test_partial_window_values_in_the_map():
    """L=11, patch 4, stride 4: the cut-off last window [8:11] is still one window for its 3 elements."""
    model = mlp(sizes=(11, 5, 3))[0]
    x = rng(3).standard_normal((1, 11)).astype(np.float32)
    runner = ModelRunner(model)
    got = occlusion(runner, runner.feeds({"x": x}), "x", patch=4)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    f = lambda v: sess.run(None, {"x": v})[0][0]  # noqa: E731
    c = int(f(x).argmax())
    xo = x.copy()
    xo[0, 8:] = 0
    assert np.all(got[0, 8:] == np.float32(np.float64(f(x)[c]) - np.float64(f(xo)[c])))


def test_normalize_divides_by_the_unoccluded_score_and_softmax_is_stripped():
    x = rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    plain = onnxplain.Explainer(small_cnn(softmax=False), "occlusion", patch=4).explain(x)["occlusion"]
    soft = onnxplain.Explainer(small_cnn(softmax=True), "occlusion", patch=4).explain(x)["occlusion"]
    np.testing.assert_array_equal(plain, soft)  # the logit is explained, as by the compiled methods
    norm = onnxplain.Explainer(small_cnn(), "occlusion", patch=4, normalize=True).explain(x)["occlusion"]
    logits = ort.InferenceSession(small_cnn(softmax=False).SerializeToString()).run(None, {"x": x})[0]
    f0 = np.abs(logits.max(1)).astype(np.float64)[:, None, None, None]
    np.testing.assert_allclose(norm, plain / f0, rtol=1e-6)
    prob = onnxplain.Explainer(small_cnn(), "occlusion", patch=4, strip_softmax=False).explain(x)["occlusion"]
    assert not np.allclose(prob, plain)


def test_explainer_mixes_compiled_and_agnostic_methods_and_fixed_batch_models():
    x = rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    exp = onnxplain.Explainer(small_cnn(), ["gradient", "occlusion"], params={"occlusion.patch": "2,4",
                                                                               "occlusion.stride": 2})
    maps = exp.explain(x, target=[1, 2, 3])
    assert list(maps) == ["gradient", "occlusion"] and maps["occlusion"].shape == x.shape
    alone = onnxplain.Explainer(small_cnn(), "gradient").explain(x, target=[1, 2, 3])["gradient"]
    np.testing.assert_array_equal(maps["gradient"], alone)
    runner = ModelRunner(small_cnn(softmax=False))
    want = occlusion(runner, runner.feeds({"x": x}), "x", np.array([1, 2, 3]), patch=(2, 4), stride=2)
    np.testing.assert_array_equal(maps["occlusion"], want)
    fixed = onnxplain.Explainer(small_cnn(batch=1), "occlusion", patch=(2, 4), stride=2)
    got = np.concatenate([fixed.explain(x[i:i + 1], target=i + 1)["occlusion"] for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_works_on_a_model_no_propagation_rule_covers():
    """CumSum has no backward rule: compiling fails, occlusion runs on the original model."""
    w = rng(6).standard_normal((3, 4)).astype(np.float32)
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    model = make_model(nodes, [("x", ["N", 3])], [("y", ["N", 4])], {"w": w, "axis": np.array(1, np.int64)})
    with pytest.raises(OnnxplainError, match="CumSum"):
        onnxplain.compile(model, "gradient")
    x = np.array([[1.2, -0.7, 2.6]], np.float32)
    got = onnxplain.Explainer(model, "occlusion", patch=1).explain(x, target=0)["occlusion"]
    # y_0 = sum_k cumsum(x)_k w[k, 0] = sum_j x_j sum_{k >= j} w[k, 0]: removing x_j drops y_0 by that term
    tail = np.cumsum(w[::-1, 0].astype(np.float64))[::-1]
    np.testing.assert_allclose(got[0], x[0] * tail, rtol=1e-5)


@pytest.mark.parametrize("params, message", [
    ({"patch": 9}, "larger than the input"), ({"patch": 2, "stride": 0}, "stride of zero"),
    ({"patch": 2, "stride": 3}, "larger than the patch"), ({"patch": (1, 2, 3, 4)}, "entries"),
    ({"reference": np.zeros(5)}, "does not broadcast"), ({"patch": "x"}, "patch"),
])
def test_bad_parameters_are_reported(params, message):
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(OnnxplainError, match=message):
        onnxplain.Explainer(small_cnn(), "occlusion", **params).explain(x)


def test_bad_data_and_compile_are_reported():
    exp = onnxplain.Explainer(small_cnn(), "occlusion")
    with pytest.raises(InputError, match="expected shape"):
        exp.explain(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(InputError, match="out of range"):
        exp.explain(np.zeros((1, 3, 8, 8), np.float32), target=7)
    with pytest.raises(OnnxplainError, match="model-agnostic"):
        onnxplain.compile(small_cnn(), ["gradient", "occlusion"])


def test_cli_errors_exit_2_without_output(tmp_path, capsys):
    from onnxplain.cli import main

    src, data, out = tmp_path / "m.onnx", tmp_path / "x.npy", tmp_path / "grid.png"
    onnx.save(small_cnn(), src)
    np.save(data, np.zeros((2, 3, 8, 8), np.float32))
    for extra in (["--param", "patch=16"], ["--param", "occlusion.stride=0"]):
        assert main(["explain", str(src), "--data", str(data), "-m", "occlusion", "-o", str(out)] + extra) == 2
        assert "occlusion" in capsys.readouterr().err and not out.exists()


def test_memory_bound_and_second_input_held_fixed(monkeypatch):
    """max_bytes caps the copies per ONNX Runtime call; a second input is repeated unchanged per copy."""
    r = rng(8)
    w, v = r.standard_normal((10, 4)).astype(np.float32), r.standard_normal((10, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], transB=1),
             helper.make_node("Gemm", ["z", "v"], ["b"], transB=1), helper.make_node("Mul", ["a", "b"], ["y"])]
    model = make_model(nodes, [("x", ["N", 4]), ("z", ["N", 3])], [("y", ["N", 10])], {"w": w, "v": v})
    x, z = r.standard_normal((3, 4)).astype(np.float32), r.standard_normal((3, 3)).astype(np.float32)
    runner = ModelRunner(model)
    sizes, scores = [], runner.scores
    monkeypatch.setattr(runner, "scores", lambda feeds: sizes.append(len(feeds["x"])) or scores(feeds))
    got = occlusion(runner, runner.feeds({"x": x, "z": z}), "x", patch=1, max_batch=100, max_bytes=5 * (16 + 12))
    assert max(sizes[1:]) == 5 and sum(sizes[1:]) == 3 * 4  # first call: the unperturbed batch
    b = z.astype(np.float64) @ v.T.astype(np.float64)  # y = (x W^T) * (z V^T): removing x_j drops x_j W[c, j] b_c
    c = (x @ w.T * (z @ v.T)).argmax(1)
    want = x * w[c] * b[np.arange(3), c][:, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
