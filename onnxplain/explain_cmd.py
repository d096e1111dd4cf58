"""``onnxplain explain``: explain images or arrays with several methods and draw a PNG grid.

With no arguments it explains the bundled ImageNet model (EfficientNet-Lite0) on the
bundled photos with a representative set of methods and writes
``onnxplain-explain.png`` (rows = photos, columns = the photo and one map per method,
each row titled with the predicted class, its softmax probability and logit),
``onnxplain-explain.txt`` (prediction, top-5, per-method statistics) and
``onnxplain-explain.json`` (the same numbers). Without the bundled ImageNet model it
falls back to the bundled digits MLP and ten held-out digits.

The work is done by :func:`onnxplain.apps.compare.compare_methods`, reusable from Python.
"""
from __future__ import annotations

import os
import sys

from .compiler.errors import OnnxplainError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
IMAGENET_MODEL = os.path.join(DATA, "efficientnet_lite0.onnx")
IMAGENET_IMAGES = os.path.join(DATA, "images")
DIGITS_MODEL = os.path.join(DATA, "digits_mlp.onnx")
DIGITS_SAMPLES = os.path.join(DATA, "digits_samples.npz")
#: methods of the default run on the ImageNet model, and their parameters (chosen to run in < 1 min on 2 cores)
#: (guided_backprop is left out: it changes only Relu nodes, and EfficientNet-Lite0's ReLU6 are Clip nodes, so it
#: equals the gradient there)
IMAGENET_METHODS = ["gradient", "smoothgrad", "integrated_gradients", "lrp.epsilon_plus", "lrp.epsilon_gamma_box"]
IMAGENET_PARAMS = {"smoothgrad.samples": 16, "integrated_gradients.steps": 16}
DIGITS_METHODS = ["gradient", "input_t_gradient", "guided_backprop", "integrated_gradients", "smoothgrad"]


def bundled_default() -> tuple:
    """``(model, inputs, methods, params)`` of the default run: the ImageNet model and photos when bundled,
    else the digits MLP and digits."""
    if os.path.exists(IMAGENET_MODEL) and os.path.isdir(IMAGENET_IMAGES):
        return IMAGENET_MODEL, [IMAGENET_IMAGES], list(IMAGENET_METHODS), dict(IMAGENET_PARAMS)
    return DIGITS_MODEL, [DIGITS_SAMPLES], list(DIGITS_METHODS), {}


# aliases kept for older callers
DEFAULT_MODEL, _inputs, DEFAULT_METHODS, _params_default = bundled_default()


def add_parser(sub):
    p = sub.add_parser(
        "explain", help="explain inputs with several methods and draw a PNG grid",
        description="Explain inputs with several methods; write a PNG grid (rows = inputs, columns = the input "
                    "and one map per method, with predicted labels, softmax probabilities and logits), a text "
                    "summary (.txt: prediction, top-5, per-method statistics) and the numbers (.json) beside it. "
                    "With no arguments: the bundled ImageNet model (EfficientNet-Lite0) on the bundled photos "
                    "(or the bundled digits MLP on digits when the ImageNet model is not installed).")
    p.add_argument("model", nargs="?", default=None, help="the ONNX model (default: the bundled model)")
    p.add_argument("files", nargs="*", metavar="INPUT",
                   help="image files, folders of images, or one .npy/.npz array [N, ...] in the model's input "
                        "layout (key 'images', 'x' or the first array); default: the bundled inputs")
    p.add_argument("--data", action="append", default=[], metavar="PATH",
                   help="more inputs, as INPUT (repeatable)")
    p.add_argument("--range", dest="value_range", default=None, metavar="LOW,HIGH",
                   help="the input range that image pixels 0..255 map to, for models without an "
                        "'onnxplain.preprocess' metadata entry (default 0,1)")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class to explain (once for all inputs, or once per input; default: the top class)")
    p.add_argument("--limit", type=int, metavar="N", help="explain only the first N inputs")
    p.add_argument("--view", default="heatmap", choices=["heatmap", "graymap", "scaled", "masked", "blend"],
                   help="picture of each map: signed heatmap (default), graymap of |r|, input scaled by |r|, input "
                        "masked to its most relevant 20%%, heatmap blended over the input (signal methods such "
                        "as PatternNet are always projected into the input range)")
    p.add_argument("--top", type=int, default=5, metavar="K", help="classes in each top-k list (default 5)")
    p.add_argument("--cell", type=int, default=128, metavar="PIXELS", help="side of a grid cell (default 128)")
    p.add_argument("-o", "--out", default="onnxplain-explain.png",
                   help="the PNG grid to write; OUT.txt and OUT.json are written beside it "
                        "(default onnxplain-explain.png)")
    p.add_argument("--batch-size", type=int, default=2,
                   help="inputs per inference (default 2; a progress bar shows when there are several batches)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads of ONNX Runtime's CPU provider (default: ONNX Runtime's choice, "
                        "one per physical core)")
    from .cli import _add_model_options
    _add_model_options(p, "the bundled default's methods")
    return p


def run(args) -> int:
    """Run ``onnxplain explain``; return the exit code."""
    from .apps.common import check_unused, open_model, parse_range, save_json, save_text
    from .apps.compare import compare_methods
    from .cli import _params
    from .images import load_inputs

    model, inputs, methods, params = bundled_default()
    if args.model:
        model, params = args.model, {}
        methods = list(DIGITS_METHODS)
    given = list(args.files) + list(args.data)
    if args.model and not given:
        raise OnnxplainError("give the inputs to explain (image files, a folder or a .npy/.npz array) after MODEL")
    methods = args.methods or methods
    params = {**(params if not args.methods else {}), **_params(args.param, args.rules)}
    info = open_model(model, parse_range(args.value_range))
    check_unused(args, [info])
    x, names = load_inputs(given or inputs, info.spec, warn=_warn)
    if args.limit is not None:
        if args.limit < 1:
            raise OnnxplainError(f"--limit must be at least 1, got {args.limit}")
        x, names = x[: args.limit], names[: args.limit]
    opts = dict(threads=args.threads, output=args.output_name, strip_softmax=not args.no_strip_softmax,
                batchnorm="pass" if args.no_fold_bn and args.batchnorm == "fold" else args.batchnorm)
    result = compare_methods(info, x, methods, names=names, targets=args.target, params=params, view=args.view,
                             top=args.top, cell_size=args.cell, batch_size=args.batch_size, out=args.out, **opts)
    stem = os.path.splitext(args.out)[0]
    text = summary(result, params)
    save_text(stem + ".txt", text)
    save_json(stem + ".json", {k: v for k, v in result.items() if k not in ("maps", "logits", "probs")})
    print(text)
    return 0


def _warn(msg: str) -> None:
    print(f"onnxplain explain: warning: {msg}", file=sys.stderr)


def summary(result: dict, params: dict) -> str:
    """The text summary of a :func:`~onnxplain.apps.compare.compare_methods` result."""
    methods = result["methods"]
    n = len(result["samples"])
    shape = tuple(next(iter(result["maps"].values())).shape[1:]) if result["maps"] else ()
    lines = [f"model: {result['model']}", f"inputs: {n} of shape {shape}", f"methods: {', '.join(methods)}"]
    if params:
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    lines += ["", "input  predicted  prob    logit    name"]
    for i, s in enumerate(result["samples"]):
        lines.append(f"{i:>5}  {s['class']:>9}  {s['prob']:.4f}  {s['logit']:>7.3f}  {s['name']}  ({s['label']})")
    lines += ["", "top-k per input (class: label, probability, logit):"]
    for i, s in enumerate(result["samples"]):
        lines.append(f"  #{i}: " + "; ".join(f"{t['class']}: {t['label']} {t['prob']:.4f} {t['logit']:.3f}"
                                             for t in s["top"]))
    lines += ["", "per-method statistics of each map (sum, sum of |r|, share of positive mass):",
              "input  target  method" + " " * 22 + "sum          |r| sum      positive"]
    for i, s in enumerate(result["samples"]):
        for m in methods:
            st = s["stats"][m]
            lines.append(f"{i:>5}  {s['target']:>6}  {m[:26]:<26}  {st['sum']:>11.4g}  {st['abs_sum']:>11.4g}  "
                         f"{st['positive_share']:>8.3f}")
    lines += ["", f"figure: {result['figure']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main
    sys.exit(main(["explain"] + sys.argv[1:]))
