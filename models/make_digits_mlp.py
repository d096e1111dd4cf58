"""Train the bundled default model: a small MLP on scikit-learn's digits (8x8), exported to ONNX by hand.

Run from the repository root (needs scikit-learn and onnx, both installable from PyPI; no download):

    python models/make_digits_mlp.py

Writes ``onnxplain/data/digits_mlp.onnx`` (input ``image`` [N, 1, 8, 8] in [0, 1]; outputs ``probabilities``
[N, 10] through a final Softmax) and ``onnxplain/data/digits_samples.npz`` (held-out images and labels).
The data set ships inside scikit-learn (UCI optical digits, CC BY 4.0); the weights are trained here.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "onnxplain", "data")


def train():
    """Fit the MLP (fixed seed); return the model and the held-out split."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25, random_state=0,
                                              stratify=digits.target)
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), alpha=1e-3, max_iter=600, random_state=0)
    clf.fit(x_tr.reshape(len(x_tr), -1), y_tr)
    acc = clf.score(x_te.reshape(len(x_te), -1), y_te)
    return clf, x_te, y_te, acc


def to_onnx(clf) -> onnx.ModelProto:
    """Flatten -> (Gemm -> Relu) x 2 -> Gemm -> Softmax, with the fitted coefficients."""
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], name="flatten")]
    inits, prev = [], "flat"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        last = i == len(clf.coefs_) - 1
        out = "logits" if last else f"h{i}"
        inits += [numpy_helper.from_array(w.astype(np.float32), f"dense{i}.weight"),
                  numpy_helper.from_array(b.astype(np.float32), f"dense{i}.bias")]
        nodes.append(helper.make_node("Gemm", [prev, f"dense{i}.weight", f"dense{i}.bias"], [out], name=f"dense{i}"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"a{i}"], name=f"relu{i}"))
            out = f"a{i}"
        prev = out
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"))
    graph = helper.make_graph(nodes, "digits_mlp",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="onnxplain")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    clf, x_te, y_te, acc = train()
    print(f"held-out accuracy: {acc:.4f}")
    os.makedirs(OUT, exist_ok=True)
    onnx.save(to_onnx(clf), os.path.join(OUT, "digits_mlp.onnx"))
    pick = [int(np.flatnonzero(y_te == d)[0]) for d in range(10)]
    np.savez_compressed(os.path.join(OUT, "digits_samples.npz"), images=x_te[pick][:, None], labels=y_te[pick],
                        accuracy=np.float64(acc))


if __name__ == "__main__":
    main()
