"""Perturbation analysis (AOPC, Samek et al. 2017) of PatternAttribution against other methods.

Run from the repository root::

    python bench/pattern_aopc.py digits            # bundled digits MLP, 450 held-out digits
    python bench/pattern_aopc.py mnist [--n 1000]  # bundled MNIST CNN, the bundled test digits

Uses :func:`onnxplain.apps.perturbation.compare_methods` (MoRF, uniform-noise fill, seed 0) with the
bundled patterns (``models/make_patterns.py``); writes ``bench/results/pattern_aopc_<model>.json`` and
prints the Markdown table. Region scores: ``sum`` of the map per region for attributions (pattern.*,
LRP, input x gradient), ``abs`` for the gradient (the perturbation module's defaults); PatternNet's
signal is not an attribution but is listed for reference (scored by ``abs``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "onnxplain", "data")
METHODS = ["pattern.attribution", "pattern.net", "gradient", "input_t_gradient", "lrp.epsilon_plus_flat"]


def digits_test() -> tuple:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    _, x_te, _, y_te = train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    return x_te[:, None], y_te


def main() -> None:
    from onnxplain.apps.perturbation import compare_methods

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=["digits", "mnist"])
    ap.add_argument("--n", type=int, default=1000, help="test images (default 1000, all for digits)")
    ap.add_argument("--region", type=int, default=None, help="region side (default: 1 for digits, 4 for MNIST)")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    if args.model == "digits":
        model, (x, _) = os.path.join(DATA, "digits_mlp.onnx"), digits_test()
        region = args.region or 1
    else:
        model = os.path.join(DATA, "mnist_cnn.onnx")
        with np.load(os.path.join(DATA, "mnist_test.npz")) as z:
            key = "images" if "images" in z.files else z.files[0]
            x = z[key]
        x = (x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32))
        if x.ndim == 3:
            x = x[:, None]
        region = args.region or 4
    x = x[:args.n]
    patterns = os.path.join(DATA, os.path.basename(model).replace(".onnx", "_patterns.npz"))
    res = compare_methods(model, x, METHODS, params={"patterns": patterns}, region=region, steps=args.steps,
                          order="morf", fill="noise", seed=0, region_score={"pattern.net": "abs"}, progress=False)
    print(f"{args.model}: {len(x)} images, region {region}x{region}, {res.settings['steps']} steps, MoRF, noise fill")
    print(res.table())
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = os.path.join(HERE, "results", f"pattern_aopc_{args.model}.json")
    with open(out, "w") as fh:
        json.dump(res.to_dict(), fh, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
