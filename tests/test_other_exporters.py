"""Models from exporters other than PyTorch: gradients against central finite differences.

* scikit-learn's MLPClassifier exported by skl2onnx (``models/make_sklearn_model.py``): its label
  output goes through ``ai.onnx.ml.ArrayFeatureExtractor``, which compilation rewrites into a
  default-domain ``Gather``;
* the bundled digits MLP, written directly with ``onnx.helper`` (``models/make_digits_mlp.py``).

The reference is the original model in ONNX's reference evaluator in float64 (ai.onnx.ml ops
included), differentiated by central differences along the compiled gradient and along random
directions: ``(f(x + h v) - f(x - h v)) / 2h`` against ``<grad, v>``.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain
from reference import Reference, run

HERE = os.path.dirname(__file__)
SKLEARN = os.path.join(HERE, "..", "models", "fixtures", "digits_sklearn.onnx")
DIGITS = os.path.join(HERE, "..", "onnxplain", "data", "digits_mlp.onnx")


def _with_output(path: str, name: str) -> onnx.ModelProto:
    m = onnx.load(path)
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def _softmax_input(model: onnx.ModelProto) -> str:
    return next(n.input[0] for n in model.graph.node if n.op_type == "Softmax")


def _directional_checks(ref: Reference, x, grad, name, target, h=1e-4, k=4):
    rng = np.random.default_rng(0)
    for n in range(len(x)):
        dirs = [grad[n] / np.linalg.norm(grad[n])] + [rng.standard_normal(x[n].shape) for _ in range(k)]
        for v in dirs:
            xp, xm = x[n:n + 1] + h * v, x[n:n + 1] - h * v
            fd = (ref({name: xp}).reshape(1, -1)[0, target[n]] - ref({name: xm}).reshape(1, -1)[0, target[n]]) / (2 * h)
            np.testing.assert_allclose(np.sum(grad[n] * v), fd, rtol=1e-4, atol=1e-6 * np.linalg.norm(grad[n]))


def test_sklearn_mlp_via_skl2onnx():
    model = onnx.load(SKLEARN)
    assert any(n.domain == "ai.onnx.ml" for n in model.graph.node)
    compiled = onnxplain.compile(model, ["gradient", "integrated_gradients"], output="probabilities", steps=4)
    assert all(n.domain in ("", "ai.onnx") for n in compiled.graph.node)
    x = (np.random.default_rng(1).uniform(0, 1, (3, 64))).astype(np.float32)
    out = run(compiled, {"X": x})
    original = run(model, {"X": x})
    np.testing.assert_array_equal(out["label"], original["label"])
    np.testing.assert_allclose(out["probabilities"], original["probabilities"], rtol=1e-6)
    logits = _softmax_input(model)
    ref = Reference(_with_output(SKLEARN, logits), logits)
    target = ref.top({"X": x})
    _directional_checks(ref, x.astype(np.float64), out["gradient/X"].astype(np.float64), "X", target)


def test_handwritten_onnx_digits_mlp():
    x = np.load(os.path.join(HERE, "..", "onnxplain", "data", "digits_samples.npz"))["images"][:4]
    out = run(onnxplain.compile(DIGITS, "gradient"), {"image": x})
    ref = Reference(_with_output(DIGITS, "logits"), "logits")
    target = ref.top({"image": x})
    _directional_checks(ref, x.astype(np.float64), out["gradient/image"].astype(np.float64), "image", target)


def test_zipmap_is_rejected_clearly():
    """Non-default-domain ops without an equivalent are reported by node, with a fix."""
    model = onnx.load(SKLEARN)
    node = helper.make_node("ZipMap", ["probabilities"], ["zipped"], domain="ai.onnx.ml",
                            classlabels_int64s=list(range(10)), name="the_zipmap")
    model.graph.node.append(node)
    seq = onnx.ValueInfoProto()
    seq.name = "zipped"
    seq.type.sequence_type.elem_type.map_type.key_type = TensorProto.INT64
    seq.type.sequence_type.elem_type.map_type.value_type.tensor_type.elem_type = TensorProto.FLOAT
    model.graph.output.append(seq)
    with pytest.raises(onnxplain.CompileError) as info:
        onnxplain.compile(model, "gradient", output="probabilities")
    assert any(p.node == "the_zipmap" and "zipmap" in p.fix for p in info.value.problems)
