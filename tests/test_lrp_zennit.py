"""Zennit's composites, compiled, against Zennit 0.5.1 itself (golden files from models/make_zennit_refs.py).

For six small torchvision architectures with BatchNorm and residual or concatenating blocks, both
exporters, each composite must agree with Zennit's float64 result as closely as Zennit's own float32
run does: per-sample relative L2 error at most ``3 x`` Zennit's float32 error, and at most 1e-4 where
that is smaller.  Zennit seeds the target with relevance 1, onnxplain with the logit's value, so the
compiled map is divided by the logit.

Deliberate differences, documented in models/ZENNIT_NOTES.md (section 9):

* Zennit's BatchNorm merge leaves the BatchNorm's epsilon in place; onnxplain folds BatchNorm exactly,
  so the references are Zennit run on exactly folded models (``*_exactbn64``).
* Zennit gives a *functional* residual addition (RegNet) plain gradient, and DenseNet's functional head
  ReLU/pooling too; onnxplain treats every addition of path tensors with the ``Norm`` rule and every
  average pooling alike, on the real graph.  For those two models the references are Zennit with the
  additions/pooling as modules (``*_uniform_exactbn64``), which is what Zennit's ResNet canonizer does
  for ResNets.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import onnxplain
from reference import run

FIX = os.path.join(os.path.dirname(__file__), "..", "models", "fixtures")
COMPOSITES = {"EpsilonPlus": "lrp.epsilon_plus", "EpsilonPlusFlat": "lrp.epsilon_plus_flat",
              "EpsilonGammaBox": "lrp.epsilon_gamma_box", "EpsilonAlpha2Beta1": "lrp.epsilon_alpha2_beta1",
              "EpsilonAlpha2Beta1Flat": "lrp.epsilon_alpha2_beta1_flat"}
ARCHS = ["vgg", "resnet", "densenet", "squeezenet1_1", "regnet", "googlenet"]


def _err(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_composites_match_zennit(arch, exporter):
    ref = dict(np.load(os.path.join(FIX, f"{arch}_lrp.npz")))
    model = onnxplain.compile(os.path.join(FIX, f"{arch}_{exporter}.onnx"), list(COMPOSITES.values()),
                              params={"lrp.epsilon_gamma_box.low": -3.0, "lrp.epsilon_gamma_box.high": 3.0})
    out = run(model, {"input": ref["x"], "target": ref["target"]})
    logit = ref["logits64"][np.arange(len(ref["x"])), ref["target"]].reshape(-1, 1, 1, 1)
    for zname, method in COMPOSITES.items():
        key = f"{zname}_uniform_exactbn" if f"{zname}_uniform_exactbn64" in ref else f"{zname}_exactbn"
        err = _err(out[f"{method}/input"] / logit, ref[f"{key}64"])
        bound = np.maximum(3 * ref[f"{key}32_err"], 1e-4)
        assert (err <= bound).all(), f"{method}: error {err} > bound {bound}"
