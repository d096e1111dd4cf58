"""Every method of the gradient family against an independent float64 reference.

* gradient, input x gradient, integrated gradients, SmoothGrad, VarGrad: float64
  central differences of the original model (ONNX reference evaluator), combined
  as each method's formula says (IG: the documented Riemann sums; SmoothGrad and
  VarGrad: the documented noise generator re-implemented in NumPy).
* Deconvnet and Guided Backprop: a NumPy float64 implementation of an MLP's
  modified backward pass, written from the papers' definitions.
"""
from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from nets import mlp, small_cnn
from reference import Reference, rel_err, rng, run

# Compiled float32 vs float64 differences: the nets are shallow and inputs random,
# so float32 rounding gives ~1e-6 relative; 1e-4 leaves room without hiding errors
# (a wrong weight, step or sign gives O(1)).
TOL = 1e-4


@pytest.fixture(scope="module")
def cnn():
    return small_cnn()


@pytest.fixture(scope="module")
def x():
    return rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def ref(cnn):
    return Reference(cnn, "logits")


def _ig_reference(ref, x, target, baseline, alphas, weights):
    total = np.zeros_like(x, dtype=np.float64)
    for a, w in zip(alphas, weights):
        total += w * ref.logit_gradient(baseline + a * (x - baseline), target)
    return (x - baseline) * total


def test_gradient_and_input_times_gradient(cnn, x, ref):
    out = run(onnxplain.compile(cnn, ["gradient", "input_t_gradient"]), {"x": x})
    target = ref.top({"x": x})
    fd = ref.logit_gradient(x, target)
    assert rel_err(out["gradient/x"], fd) < TOL
    assert rel_err(out["input_t_gradient/x"], x * fd) < TOL


@pytest.mark.parametrize("riemann,alphas,weights", [
    ("right", np.arange(1, 7) / 6, np.full(6, 1 / 6)),
    ("left", np.arange(0, 6) / 6, np.full(6, 1 / 6)),
    ("middle", (np.arange(6) + 0.5) / 6, np.full(6, 1 / 6)),
    ("trapezoid", np.arange(6) / 5, np.array([0.5, 1, 1, 1, 1, 0.5]) / 5),
])
def test_integrated_gradients_riemann(cnn, x, ref, riemann, alphas, weights):
    # A random baseline: at the all-zero input every max-pool window is a tie, where the
    # gradient is not defined and finite differences cannot serve as the reference.
    base = rng(9).standard_normal((3, 8, 8)).astype(np.float32)
    m = onnxplain.compile(cnn, "integrated_gradients", steps=6, riemann=riemann, chunk=4, reference=base)
    out = run(m, {"x": x})
    target = ref.top({"x": x})
    expect = _ig_reference(ref, x.astype(np.float64), target, np.broadcast_to(base, x.shape).astype(np.float64),
                           alphas, weights)
    assert rel_err(out["integrated_gradients/x"], expect) < TOL


@pytest.mark.parametrize("reference,make", [
    ("black", lambda x: np.full_like(x, -1.0)),
    ("white", lambda x: np.full_like(x, 2.0)),
    ("gray", lambda x: np.full_like(x, 0.5)),
    ("mean", lambda x: np.broadcast_to(x.mean((2, 3), keepdims=True), x.shape)),
    ("array", lambda x: np.broadcast_to(np.linspace(-1, 1, 64).reshape(8, 8), x.shape)),
])
def test_integrated_gradients_references(cnn, x, ref, reference, make):
    arr = np.linspace(-1, 1, 64).reshape(8, 8).astype(np.float32)
    value = arr if reference == "array" else reference
    m = onnxplain.compile(cnn, "integrated_gradients", steps=4, reference=value, low=-1.0, high=2.0)
    out = run(m, {"x": x})
    base = np.asarray(make(x.astype(np.float64)), np.float64)
    expect = _ig_reference(ref, x.astype(np.float64), ref.top({"x": x}), base, np.arange(1, 5) / 4, np.full(4, 0.25))
    assert rel_err(out["integrated_gradients/x"], expect) < TOL


def test_integrated_gradients_per_channel_black(cnn, x, ref):
    low = [-1.0, 0.0, 0.5]
    out = run(onnxplain.compile(cnn, "integrated_gradients", steps=3, reference="black", low=low), {"x": x})
    base = np.broadcast_to(np.array(low).reshape(1, 3, 1, 1), x.shape)
    expect = _ig_reference(ref, x.astype(np.float64), ref.top({"x": x}), base, np.arange(1, 4) / 3, np.full(3, 1 / 3))
    assert rel_err(out["integrated_gradients/x"], expect) < TOL


def test_integrated_gradients_completeness(cnn, x, ref):
    """With many steps the attributions sum to f(x) - f(x') (the IG axiom), up to the Riemann error."""
    out = run(onnxplain.compile(cnn, "integrated_gradients", steps=256, riemann="trapezoid", chunk=64), {"x": x})
    t = ref.top({"x": x})
    fx = ref({"x": x})[np.arange(3), t]
    f0 = ref({"x": np.zeros_like(x)})[np.arange(3), t]
    sums = out["integrated_gradients/x"].reshape(3, -1).sum(1)
    np.testing.assert_allclose(sums, fx - f0, rtol=2e-2, atol=1e-3)


def _noise_words(seed: int, samples: int, item_shape, first: int = 0) -> tuple:
    """The documented generator's integers: counter c = (k D + e) mod 2^32, five squaring rounds.

    Evaluated in Python integers (no wrap-around can hide an overflow of the graph's
    int64; each intermediate is checked to stay below 2^63).  Returns the 24-bit
    words ``floor(x_4 / 2^7)``, ``floor(x_5 / 2^7)`` of samples ``first ...
    first + samples - 1``, int64 of shape ``[samples, 1, *item_shape]``.
    """
    d = int(np.prod(item_shape))
    k = (first + np.arange(samples)).astype(object).reshape(-1, 1)
    c = (k * d + np.arange(d).astype(object)) % 2 ** 32
    key = (seed * 0x9E3779B9) % 2 ** 32
    y = c * 0x1B873593
    t = y + key * 0x165667B1
    x, words = t % 2 ** 31, []
    for r in range(1, 6):
        s = x * x + (y if r % 2 else t)
        assert max(s.ravel()) < 2 ** 63
        x = (s // 2 ** 16) % 2 ** 31
        if r >= 4:
            words.append((x // 2 ** 7).astype(np.int64).reshape((samples, 1) + tuple(item_shape)))
    return tuple(words)


def _noise(seed: int, samples: int, shape) -> np.ndarray:
    """The documented noise z[k, 0, ...] (float64 Box-Muller on U(v) = (v + 0.5) / 2^24); broadcasts over the batch."""
    v1, v2 = _noise_words(seed, samples, shape[1:])
    u1, u2 = (v1 + 0.5) / 2 ** 24, (v2 + 0.5) / 2 ** 24
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def _noisy_grads(ref, x, samples, scale, seed):
    z = _noise(seed, samples, x.shape)
    span = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3))).reshape(-1, 1, 1, 1)
    t = ref.top({"x": x})
    return np.stack([ref.logit_gradient(x + scale * span * z[k], t) for k in range(samples)])  # z[k]: [1, ...]


@pytest.mark.parametrize("post", ["none", "abs", "square"])
def test_smoothgrad(cnn, x, ref, post):
    m = onnxplain.compile(cnn, "smoothgrad", samples=5, noise_scale=0.2, seed=7, postprocess=post, chunk=2)
    out = run(m, {"x": x})["smoothgrad/x"]
    g = _noisy_grads(ref, x.astype(np.float64), 5, 0.2, 7)
    g = {"none": g, "abs": np.abs(g), "square": g ** 2}[post]
    assert rel_err(out, g.mean(0)) < TOL


def test_vargrad(cnn, x, ref):
    out = run(onnxplain.compile(cnn, "vargrad", samples=6, noise_scale=0.3, seed=3), {"x": x})["vargrad/x"]
    g = _noisy_grads(ref, x.astype(np.float64), 6, 0.3, 3)
    assert rel_err(out, g.var(0)) < 1e-3  # E[g^2] - E[g]^2 loses a few digits in float32


def test_noise_is_reproducible_and_seeded(cnn, x):
    a = run(onnxplain.compile(cnn, "smoothgrad", samples=3, seed=1), {"x": x})["smoothgrad/x"]
    b = run(onnxplain.compile(cnn, "smoothgrad", samples=3, seed=1), {"x": x})["smoothgrad/x"]
    c = run(onnxplain.compile(cnn, "smoothgrad", samples=3, seed=2), {"x": x})["smoothgrad/x"]
    np.testing.assert_array_equal(a, b)
    assert rel_err(a, c) > 1e-2


def _modified_backward(layers, x, target, mode):
    """Float64 MLP backward where ReLUs pass relu(g) (deconvnet) or relu(g)*[z>0] (guided)."""
    acts, h = [], x.astype(np.float64)
    for i, (w, b) in enumerate(layers):
        z = h @ w.T.astype(np.float64) + b
        if i < len(layers) - 1:
            acts.append(z)
            h = np.maximum(z, 0)
    g = np.zeros((x.shape[0], layers[-1][0].shape[0]))
    g[np.arange(len(x)), target] = 1.0
    for i in range(len(layers) - 1, -1, -1):
        g = g @ layers[i][0].astype(np.float64)
        if i > 0:
            z = acts[i - 1]
            g = np.maximum(g, 0) * (z > 0) if mode == "guided_backprop" else np.maximum(g, 0)
    return g


@pytest.mark.parametrize("mode", ["deconvnet", "guided_backprop"])
def test_deconvnet_and_guided_backprop(mode):
    model, layers = mlp(seed=3)
    x = rng(5).standard_normal((4, 6)).astype(np.float32)
    out = run(onnxplain.compile(model, mode), {"x": x})[f"{mode}/x"]
    target = Reference(model).top({"x": x})
    assert rel_err(out, _modified_backward(layers, x, target, mode)) < TOL


def test_explicit_targets_one_image_several_classes(cnn, x, ref):
    """Explaining classes 0..4 of one image is one call with the image repeated."""
    xs = np.repeat(x[:1], 5, axis=0)
    target = np.arange(5, dtype=np.int64)
    out = run(onnxplain.compile(cnn, ["gradient", "integrated_gradients"], steps=3), {"x": xs, "target": target})
    assert rel_err(out["gradient/x"], ref.logit_gradient(xs, target)) < TOL
    expect = _ig_reference(ref, xs.astype(np.float64), target, np.zeros_like(xs, np.float64),
                           np.arange(1, 4) / 3, np.full(3, 1 / 3))
    assert rel_err(out["integrated_gradients/x"], expect) < TOL


def test_fixed_batch_model_uses_chunk_one(x):
    model = small_cnn(batch=3)
    ref = Reference(model, "logits")
    out = run(onnxplain.compile(model, "integrated_gradients", steps=3), {"x": x})
    expect = _ig_reference(ref, x.astype(np.float64), ref.top({"x": x}), np.zeros_like(x, np.float64),
                           np.arange(1, 4) / 3, np.full(3, 1 / 3))
    assert rel_err(out["integrated_gradients/x"], expect) < TOL
    with pytest.raises(onnxplain.CompileError, match="fixed batch size"):
        onnxplain.compile(model, "integrated_gradients", steps=3, chunk=2)


def test_loop_bodies_hold_their_convolution_weights(cnn, x, ref, monkeypatch):
    """IG's Loop body gets its own copy of the constants its convolutions read (compiler/loops.py: ONNX
    Runtime optimizes only convolutions whose weights are initializers of their own graph); the maps
    stay those of the float64 reference; ``limit`` bounds the copied bytes."""
    import onnx

    import onnxplain.compiler.api as capi
    from onnxplain.compiler.loops import localize_loop_weights

    def body_of(m):
        return next(a.g for n in m.graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body")

    model = onnxplain.compile(cnn, "integrated_gradients", steps=6, riemann="right", chunk=2)
    onnx.checker.check_model(model, full_check=True)
    body = body_of(model)
    local, outer = {t.name for t in body.initializer}, {t.name for t in model.graph.initializer}
    convs = [n for n in body.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and local and not local & outer
    assert not any(i in outer for n in convs for i in n.input[1:])  # no convolution reads the outer scope
    t = ref.top({"x": x})
    ig = _ig_reference(ref, x, t, np.zeros_like(x), np.arange(1, 7) / 6, np.full(6, 1 / 6))
    out = run(model, {"x": x})["integrated_gradients/x"]
    assert rel_err(out, ig) < TOL
    assert localize_loop_weights(model) == 0  # already local: nothing left to copy
    monkeypatch.setattr(capi, "localize_loop_weights", lambda m: 0)
    plain = onnxplain.compile(cnn, "integrated_gradients", steps=6, riemann="right", chunk=2)
    assert len(body_of(plain).initializer) == 0
    assert localize_loop_weights(plain, limit=16) == 0 and len(body_of(plain).initializer) == 0
    assert localize_loop_weights(plain) == len(local)
    np.testing.assert_array_equal(run(plain, {"x": x})["integrated_gradients/x"], out)
