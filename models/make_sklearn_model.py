"""A model from another exporter: scikit-learn's MLPClassifier on the digits, exported with skl2onnx.

Run from the repository root (needs scikit-learn and skl2onnx from PyPI; no download):

    pip install skl2onnx && python models/make_sklearn_model.py

Writes ``models/fixtures/digits_sklearn.onnx`` (inputs ``X`` [N, 64] in [0, 1]; outputs ``label`` via
ai.onnx.ml ArrayFeatureExtractor, ``probabilities`` via Softmax).  The data ship with scikit-learn
(UCI optical digits, CC BY 4.0); the weights are trained here.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "digits_sklearn.onnx")


def main() -> None:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(x, digits.target)
    model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, OUT)
    print(f"wrote {OUT}: training accuracy {clf.score(x, digits.target):.4f}")


if __name__ == "__main__":
    main()
