"""``onnxplain analyse``: one input, several classes (rows) x several methods (columns), with probabilities.

With no arguments: the bundled MNIST CNN on the first bundled test digit it gets wrong
(the true class is shown), or, without the MNIST files, the bundled digits MLP on its
least certain bundled digit.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from ..compiler.errors import OnnxplainError

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
DEFAULT_METHODS = ["gradient", "integrated_gradients", "guided_backprop", "lrp.epsilon_plus", "lrp.epsilon_gamma_box"]


def add_parser(sub):
    from ..cli import _add_model_options
    from .common import add_figure_options

    p = sub.add_parser(
        "analyse", help="explain several classes of one input with several methods (PNG + JSON)",
        description="Analyse one prediction: explain several output neurons (default: the top-5 classes) of one "
                    "input with several methods; rows = classes (name, softmax probability, logit), columns = "
                    "methods. Writes a PNG grid and a JSON file of the numbers beside it. With no arguments: "
                    "the bundled MNIST CNN on the first bundled test digit it misclassifies.")
    p.add_argument("model", nargs="?", help="the ONNX model (default: the bundled MNIST CNN)")
    p.add_argument("input", nargs="?", help="one image file, or a .npy/.npz array (pick the sample with --index)")
    p.add_argument("--index", type=int, default=0, metavar="I", help="sample of an array input (default 0)")
    p.add_argument("--target", metavar="C1,C2,...",
                   help="the classes to explain, comma-separated (default: the top --top classes)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="number of top classes (default 5)")
    p.add_argument("--label", type=int, metavar="CLASS",
                   help="the true class, shown in the figure (default: the 'labels' array of an .npz input)")
    add_figure_options(p, "onnxplain-analyse.png")
    _add_model_options(p, ",".join(DEFAULT_METHODS))
    return p


def default_input() -> tuple:
    """``(model, array file, index, true label)`` of the default run."""
    from ..images import array_labels, load_array, read_spec
    from .common import Scorer, open_model

    cnn, test = os.path.join(DATA, "mnist_cnn.onnx"), os.path.join(DATA, "mnist_test.npz")
    if os.path.exists(cnn) and os.path.exists(test):
        model, arrays = cnn, test
    else:
        model, arrays = os.path.join(DATA, "digits_mlp.onnx"), os.path.join(DATA, "digits_samples.npz")
    info = open_model(model)
    x = load_array(arrays, info.spec or read_spec(model, info.input_shape))
    labels = array_labels(arrays)
    _, probs = Scorer(info.proto)(x)
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    i = int(wrong[0]) if wrong.size else int(np.argmin(probs.max(1)))
    return model, arrays, i, int(labels[i])


def run(args) -> int:
    """Run ``onnxplain analyse``; return the exit code."""
    from ..cli import _params
    from ..images import array_labels, load_inputs
    from .analyse import analyse
    from .common import check_unused, compile_options, open_model, parse_ints, parse_range, save_json, select

    if args.model and not args.input:
        raise OnnxplainError("give the input to analyse (an image file or a .npy/.npz array) after MODEL")
    if args.model:
        model, path, index, label = args.model, args.input, args.index, args.label
        if label is None and str(path).lower().endswith(".npz"):
            labels = array_labels(path)
            label = int(labels[index]) if labels is not None and 0 <= index < len(labels) else None
    else:
        model, path, index, label = default_input()
        label = label if args.label is None else args.label
    info = open_model(model, parse_range(args.value_range))
    check_unused(args, [info])
    x, names = load_inputs(path, info.spec, warn=_warn)
    x, names = select(x, names, [index])
    methods = args.methods or DEFAULT_METHODS
    result = analyse(info, x, methods, targets=parse_ints(args.target, "--target"), top=args.top, name=names[0],
                     label=label, params=_params(args.param, args.rules), out=args.out, view=args.view,
                     cell_size=args.cell, **compile_options(args))
    save_json(os.path.splitext(args.out)[0] + ".json", {k: v for k, v in result.items() if k != "maps"})
    p = result["predicted"]
    print(f"{info.name} on {names[0]}: predicted {p['class']} ({p['label']}) p={p['prob']:.4f} "
          f"logit={p['logit']:.3f}" + (f"; true class {label}" if label is not None else ""))
    for r in result["rows"]:
        sums = "  ".join(f"{m}={r['stats'][m]['sum']:.4g}" for m in methods)
        print(f"  class {r['class']:>4} ({r['label']}): p={r['prob']:.4f} logit={r['logit']:.3f}  sum: {sums}")
    print(f"figure: {args.out}")
    return 0


def _warn(msg: str) -> None:
    print(f"onnxplain analyse: warning: {msg}", file=sys.stderr)
