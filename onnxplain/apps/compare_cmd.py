"""``onnxplain compare-models``: the same methods on several models for the same inputs (PNG + JSON).

With no arguments: the bundled MNIST CNN and the two bundled MLPs (exported from PyTorch and
from scikit-learn, flat 784-value inputs) on two bundled test digits; each model reads the
digit with its own preprocess spec.
"""
from __future__ import annotations

import os
import sys

from ..compiler.errors import OnnxplainError

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
MNIST_MODELS = ["mnist_cnn.onnx", "mnist_mlp_torch.onnx", "mnist_mlp_sklearn.onnx"]
DEFAULT_METHODS = ["gradient", "integrated_gradients", "guided_backprop", "lrp.epsilon", "lrp.epsilon_gamma_box"]


def add_parser(sub):
    from ..cli import _add_model_options
    from .common import add_figure_options

    p = sub.add_parser(
        "compare-models", help="explain the same inputs with the same methods on several models (PNG + JSON)",
        description="Compare models: rows = (input, model), columns = the input as the model sees it and one "
                    "map per method, each row with the model's prediction, softmax probability and logit. Each "
                    "model reads image files with its own preprocess spec (layout, size, range), so models from "
                    "different frameworks and layouts compare on one picture. With no arguments: the bundled "
                    "MNIST CNN and MLPs (PyTorch, scikit-learn) on two bundled test digits.")
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more ONNX models (default: the bundled MNIST "
                   "models)")
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="inputs: image files or folders, or one .npy/.npz array in the first model's layout (or "
                        "uint8 pixels [N, H, W(, C)]); repeatable (default: the bundled MNIST test digits)")
    p.add_argument("--index", metavar="I,J,...", help="use only these inputs (default: all; 0,1 for the default)")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class to explain (once for all inputs or once per input; default: each model's top "
                        "class)")
    add_figure_options(p, "onnxplain-compare-models.png")
    _add_model_options(p, ",".join(DEFAULT_METHODS))
    return p


def default_models() -> list:
    """The bundled MNIST models that are installed (the digits MLP alone when none is)."""
    found = [os.path.join(DATA, m) for m in MNIST_MODELS if os.path.exists(os.path.join(DATA, m))]
    return found or [os.path.join(DATA, "digits_mlp.onnx")]


def run(args) -> int:
    """Run ``onnxplain compare-models``; return the exit code."""
    from ..cli import _params
    from .common import check_unused, compile_options, open_model, parse_ints, parse_range, save_json
    from .compare import compare_models

    models = args.models or default_models()
    data, index = args.data, parse_ints(args.index, "--index")
    if not data:
        if args.models:
            raise OnnxplainError("give the inputs with --data (image files, folders or a .npy/.npz array)")
        test = os.path.join(DATA, "mnist_test.npz")
        data = [test if os.path.exists(test) else os.path.join(DATA, "digits_samples.npz")]
        index = index if index is not None else [0, 1]
    methods = args.methods or DEFAULT_METHODS
    check_unused(args, [open_model(m) for m in models] if args.inputs else [])
    result = compare_models(models, data, methods, targets=args.target, params=_params(args.param, args.rules),
                            out=args.out, view=args.view, value_range=parse_range(args.value_range),
                            cell_size=args.cell, index=index, warn=_warn, **compile_options(args))
    slim = {"methods": result["methods"], "figure": result["figure"],
            "models": [{k: v for k, v in m.items() if k not in ("maps", "logits", "probs")} for m in result["models"]]}
    save_json(os.path.splitext(args.out)[0] + ".json", slim)
    for m in slim["models"]:
        print(m["path"])
        for s in m["samples"]:
            sums = "  ".join(f"{k}={s['stats'][k]['sum']:.4g}" for k in methods)
            print(f"  {os.path.basename(s['name'])}: predicted {s['class']} ({s['label']}) p={s['prob']:.4f} "
                  f"logit={s['logit']:.3f}  sum: {sums}")
    print(f"figure: {args.out}")
    return 0


def _warn(msg: str) -> None:
    print(f"onnxplain compare-models: warning: {msg}", file=sys.stderr)
