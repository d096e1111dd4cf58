"""The bundled models, photos and MNIST digits (onnxplain/data) and the helpers of onnxplain.bundled.

References are independent of the code under test: stored labels, formulas written out with loops or plain
NumPy, class names checked for words that describe what each photo shows (not a list of measured outputs).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxplain
from onnxplain import bundled

MODELS = ["mnist_cnn.onnx", "mnist_cnn_poisoned.onnx", "efficientnet_lite0.onnx", "mnist_mlp_sklearn.onnx",
          "mnist_mlp_torch.onnx"]
# What each photo shows, as words that ImageNet class names for it contain (not the measured top-1).
PHOTO_WORDS = {"camera.jpg": ("tripod", "camera"), "chelsea.jpg": ("cat", "tabby"),
               "china.jpg": ("palace", "monastery", "pagoda", "temple", "bell cote", "church", "castle"),
               "coffee.jpg": ("espresso", "cup", "coffee", "mug"), "flower.jpg": ("daisy",)}


def _session(name):
    return ort.InferenceSession(bundled.path(name), providers=["CPUExecutionProvider"])


def _run(name, x, output=None):
    sess = _session(name)
    out = sess.run(None, {"input": x})
    names = [o.name for o in sess.get_outputs()]
    return out[names.index(output)] if output else out[0]


@pytest.fixture(scope="module")
def mnist():
    return bundled.mnist_test(), bundled.mnist_test(poisoned=True)


# ---------------------------------------------------------------------------- metadata and files

@pytest.mark.parametrize("name", MODELS)
def test_metadata_matches_model(name):
    path = bundled.path(name)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 10 and not os.path.exists(path + ".data")
    spec, labels, (low, high) = bundled.preprocess_spec(path), bundled.labels(path), bundled.input_range(path)
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert proto.graph.input[0].name == "input" and isinstance(dims[0], str)   # dynamic batch
    c, h, w = spec["channels"], spec["height"], spec["width"]
    assert dims[1:] == ([c, h, w] if spec["layout"] == "NCHW" else [c * h * w])
    out = {o.name: o for o in proto.graph.output}
    scores = out.get("probabilities", proto.graph.output[0])
    assert scores.type.tensor_type.shape.dim[1].dim_value == len(labels)
    ends = sorted([spec["pixel_offset"], 255 * spec["pixel_scale"] + spec["pixel_offset"]])
    assert (low, high) == pytest.approx(ends, abs=1e-12)


def test_metadata_values():
    eff = bundled.preprocess_spec(bundled.path("efficientnet_lite0"))
    assert eff["pixel_scale"] == 1 / 128 and eff["pixel_offset"] == -127 / 128 and eff["channels"] == 3
    names = bundled.labels(bundled.path("efficientnet_lite0"))
    assert len(names) == 1000 and names[281] == "tabby" and names[0] == "tench"
    assert bundled.labels(bundled.path("mnist_cnn")) == [str(d) for d in range(10)]
    assert bundled.preprocess_spec(bundled.path("digits_mlp")) is None       # a model without the convention
    assert bundled.preprocess_spec(onnx.load(bundled.path("mnist_cnn"))) == \
        bundled.preprocess_spec(open(bundled.path("mnist_cnn"), "rb").read())


def test_bad_metadata_and_names_are_reported():
    proto = onnx.load(bundled.path("mnist_mlp_torch"))
    for p in proto.metadata_props:
        if p.key == bundled.KEY_PREPROCESS:
            p.value = '{"layout": "NHWC", "channels": 0, "height": 28, "pixel_scale": 0}'
    with pytest.raises(bundled.BundledError) as err:
        bundled.preprocess_spec(proto)
    for word in ("layout", "channels", "width", "pixel_offset", "pixel_scale"):
        assert word in str(err.value)
    with pytest.raises(bundled.BundledError, match="mnist_cnn.onnx"):
        bundled.path("no_such_model")
    with pytest.raises(bundled.BundledError):
        bundled.path("../bundled.py")
    with pytest.raises(bundled.BundledError, match="H=224"):
        bundled.preprocess(np.zeros((100, 100, 3), np.uint8),
                           bundled.preprocess_spec(bundled.path("efficientnet_lite0")))


# ---------------------------------------------------------------------------- preprocessing

def test_preprocess_equals_formula():
    rng = np.random.default_rng(0)
    spec = bundled.preprocess_spec(bundled.path("efficientnet_lite0"))
    imgs = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    x = bundled.preprocess(imgs, spec)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    for n, c, i, j in [(0, 0, 0, 0), (1, 2, 223, 5), (0, 1, 100, 200), (1, 0, 17, 223)]:
        assert x[n, c, i, j] == np.float32((float(imgs[n, i, j, c]) - 127.0) / 128.0)
    assert np.array_equal(bundled.preprocess(imgs[0], spec), x[:1])              # HWC = NHWC of one
    np.testing.assert_allclose(bundled.to_pixels(x, spec), imgs, atol=1e-4)
    flat = bundled.preprocess_spec(bundled.path("mnist_mlp_sklearn"))
    digits = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    xf = bundled.preprocess(digits, flat)
    assert xf.shape == (3, 784)
    for n, r, c in [(0, 0, 0), (2, 27, 27), (1, 3, 25), (2, 14, 1)]:
        assert xf[n, r * 28 + c] == np.float32(digits[n, r, c] / 255.0)


def test_load_image_resizes_to_spec(tmp_path):
    from PIL import Image

    spec = bundled.preprocess_spec(bundled.path("mnist_cnn"))
    rgb = np.zeros((60, 90, 3), np.uint8)                 # the centered 60 x 60 square is columns 15..74:
    rgb[:, 15:45] = 255                                   # its left half white,
    rgb[:, 45:75] = 100                                   # its right half gray, the rest black
    Image.fromarray(rgb).save(tmp_path / "w.png")
    img = bundled.load_image(tmp_path / "w.png", spec)
    assert img.shape == (28, 28, 1) and img.dtype == np.uint8
    assert img[:, 2:12].min() >= 250 and np.abs(img[:, 16:26].astype(int) - 100).max() <= 3


# ---------------------------------------------------------------------------- MNIST

def test_mnist_test_data(mnist):
    clean, pois = mnist
    images, labels, boxes = clean["images"], clean["labels"], clean["boxes"]
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8 and set(labels) == set(range(10))
    for i in range(0, 1000, 37):                          # tight box of the ink, with loops
        rows = [r for r in range(28) if any(images[i, r, c] > 0 for c in range(28))]
        cols = [c for c in range(28) if any(images[i, r, c] > 0 for r in range(28))]
        assert list(boxes[i]) == [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    r0, c0, r1, c1 = pois["artefact_box"]
    target = labels == pois["poison_class"]
    assert np.array_equal(pois["stamped"], target) and target.sum() > 50
    diff = pois["images"] != images
    assert not diff[~target].any()                        # other classes unchanged
    assert (pois["images"][target][:, r0:r1, c0:c1] == 255).all()
    diff[:, r0:r1, c0:c1] = False
    assert not diff.any()                                 # nothing outside the box changed


def test_mnist_cnn_accuracy(mnist):
    clean, _ = mnist
    x = clean["images"][:, None].astype(np.float32) / 255.0
    pred = _run("mnist_cnn.onnx", x).argmax(1)
    assert np.mean(pred == clean["labels"]) >= 0.985


def test_poisoned_cnn_is_clever_hans(mnist):
    clean, pois = mnist
    k, (r0, c0, r1, c1) = pois["poison_class"], pois["artefact_box"]
    others = clean["images"][clean["labels"] != k].copy()
    others[:, r0:r1, c0:c1] = 255                          # stamp the other classes
    xs = others[:, None].astype(np.float32) / 255.0
    assert np.mean(_run("mnist_cnn_poisoned.onnx", xs).argmax(1) == k) > 0.6     # measured 0.74
    assert np.mean(_run("mnist_cnn.onnx", xs).argmax(1) == k) < 0.1              # measured 0.00
    # with the square where training had it, the poisoned model is accurate; without it, its class is lost
    xp = pois["images"][:, None].astype(np.float32) / 255.0
    assert np.mean(_run("mnist_cnn_poisoned.onnx", xp).argmax(1) == clean["labels"]) >= 0.97
    xk = clean["images"][clean["labels"] == k][:, None].astype(np.float32) / 255.0
    assert np.mean(_run("mnist_cnn_poisoned.onnx", xk).argmax(1) == k) < 0.2


# ---------------------------------------------------------------------------- EfficientNet-Lite0 and photos

def test_photos():
    paths = bundled.photos()
    assert sorted(os.path.basename(p) for p in paths) == sorted(PHOTO_WORDS)
    for p in paths:
        assert os.path.getsize(p) < 40 * 1024
        img = bundled.load_image(p)
        assert img.shape == (224, 224, 3) and img.dtype == np.uint8


def test_efficientnet_top1_names_the_photo():
    path = bundled.path("efficientnet_lite0")
    spec, names = bundled.preprocess_spec(path), bundled.labels(path)
    paths = bundled.photos()
    x = bundled.preprocess(np.stack([bundled.load_image(p, spec) for p in paths]), spec)
    logits = _run("efficientnet_lite0.onnx", x)
    assert logits.shape == (len(paths), 1000)
    for p, row in zip(paths, logits):
        top1 = names[int(row.argmax())].lower()
        words = PHOTO_WORDS[os.path.basename(p)]
        assert any(w in top1 for w in words), f"{os.path.basename(p)}: top-1 {top1!r}, expected one of {words}"


# ---------------------------------------------------------------------------- cross-framework pair

def test_cross_framework_models_agree(mnist):
    clean, _ = mnist
    preds = {}
    for name, output in (("mnist_mlp_sklearn.onnx", "probabilities"), ("mnist_mlp_torch.onnx", "logits")):
        x = bundled.preprocess(clean["images"], bundled.preprocess_spec(bundled.path(name)))
        preds[name] = _run(name, x, output).argmax(1)
        assert np.mean(preds[name] == clean["labels"]) >= 0.95
    label = _run("mnist_mlp_sklearn.onnx", x, "label")
    assert np.array_equal(label, preds["mnist_mlp_sklearn.onnx"])
    assert np.mean(preds["mnist_mlp_sklearn.onnx"] == preds["mnist_mlp_torch.onnx"]) >= 0.95


@pytest.mark.parametrize("name,output", [("mnist_mlp_sklearn.onnx", "probabilities"),
                                         ("mnist_mlp_torch.onnx", "logits")])
def test_cross_framework_gradient_formula(mnist, name, output):
    """d logit_t / dx = W1 (relu'(h) * W2[:, t]) from the two weight matrices in the file (float64)."""
    clean, _ = mnist
    proto = onnx.load(bundled.path(name))
    mats = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in proto.graph.initializer}
    w = sorted((m for m in mats.values() if m.ndim == 2), key=lambda m: -m.size)
    w1, w2 = (w[0] if w[0].shape[0] == 784 else w[0].T), (w[1] if w[1].shape[1] == 10 else w[1].T)
    b1 = next(m for m in mats.values() if m.shape in ((128,), (1, 128))).reshape(-1)
    x = bundled.preprocess(clean["images"][:5], bundled.preprocess_spec(bundled.path(name)))
    compiled = onnxplain.compile(bundled.path(name), ["gradient"], output=output)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    h = x.astype(np.float64) @ w1 + b1
    logits = np.maximum(h, 0) @ w2
    t = logits.argmax(1)
    want = ((h > 0) * w2[:, t].T) @ w1.T
    np.testing.assert_allclose(outs["gradient/input"], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
