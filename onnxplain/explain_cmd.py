"""``onnxplain explain``: explain images or arrays with several methods and draw a PNG grid.

With no arguments it explains the bundled default model (an MLP trained on
scikit-learn's 8x8 digits) on ten bundled held-out digits with five methods and
writes ``onnxplain-explain.png`` and ``onnxplain-explain.txt``.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .compiler.errors import OnnxplainError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEFAULT_MODEL = os.path.join(DATA, "digits_mlp.onnx")
DEFAULT_SAMPLES = os.path.join(DATA, "digits_samples.npz")
DEFAULT_METHODS = ["gradient", "input_t_gradient", "guided_backprop", "integrated_gradients", "smoothgrad"]


def add_parser(sub):
    p = sub.add_parser("explain", help="explain inputs with several methods and draw a PNG grid",
                       description="Explain inputs with several methods; write a PNG grid (inputs x methods, "
                                   "with predicted labels and scores) and a text summary. With no arguments: the "
                                   "bundled digits model on bundled digits.")
    p.add_argument("model", nargs="?", default=None, help="the ONNX model (default: the bundled digits MLP)")
    p.add_argument("--data", metavar="PATH",
                   help="inputs: a .npy/.npz array [N, ...] (key 'images' or the first array), an image file or "
                        "a folder of images (default: the bundled digits)")
    p.add_argument("--range", dest="value_range", default="0,1", metavar="LOW,HIGH",
                   help="map image pixels 0..255 to this input range (default 0,1)")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class to explain (repeat once per input, or give once for all; default: top class)")
    p.add_argument("-o", "--out", default="onnxplain-explain.png", help="the PNG grid to write "
                   "(a .txt summary is written beside it)")
    p.add_argument("--batch-size", type=int, default=16, help="inputs per inference (default 16)")
    from .cli import _add_model_options
    _add_model_options(p, ",".join(DEFAULT_METHODS))
    return p


def load_inputs(path, shape, value_range) -> np.ndarray:
    """Arrays from .npy/.npz, or images (file or folder) resized to the model's static input shape."""
    if path is None:
        return np.load(DEFAULT_SAMPLES)["images"].astype(np.float32)
    if not os.path.exists(path):
        raise OnnxplainError(f"{path}: no such file or folder")
    if path.endswith(".npy"):
        return np.load(path).astype(np.float32)
    if path.endswith(".npz"):
        z = np.load(path)
        return z["images" if "images" in z else z.files[0]].astype(np.float32)
    files = sorted(os.path.join(path, f) for f in os.listdir(path)) if os.path.isdir(path) else [path]
    files = [f for f in files if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff"))]
    if not files:
        raise OnnxplainError(f"{path}: no images (.png, .jpg, ...) found")
    return np.stack([_load_image(f, shape, value_range) for f in files])


def _load_image(f, shape, value_range) -> np.ndarray:
    from PIL import Image

    if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise OnnxplainError("images need a model input of static shape [N, C, H, W]; pass --data x.npy instead")
    c, h, w = shape[1:]
    img = Image.open(f).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    arr = np.asarray(img, np.float32) / 255.0
    arr = arr[None] if c == 1 else np.moveaxis(arr, -1, 0)
    lo, hi = value_range
    return (lo + arr * (hi - lo)).astype(np.float32)


def run(args) -> int:
    from .api import Explainer
    from .cli import _params
    from .runtime.visualize import grid, heatmap, input_image

    model = args.model or DEFAULT_MODEL
    methods = args.methods or DEFAULT_METHODS
    try:
        value_range = tuple(float(v) for v in args.value_range.split(","))
        assert len(value_range) == 2
    except (ValueError, AssertionError):
        raise OnnxplainError(f"--range must be LOW,HIGH, got {args.value_range!r}") from None
    exp = Explainer(model, methods, params=_params(args.param, args.rules), output=args.output_name, inputs=args.inputs,
                    strip_softmax=not args.no_strip_softmax,
                    batchnorm="pass" if args.no_fold_bn and args.batchnorm == "fold" else args.batchnorm,
                    batch_size=args.batch_size)
    name = exp._single_input()
    x = load_inputs(args.data, exp.runner.input_meta[name].shape, value_range)
    target = None
    if args.target:
        target = np.array(args.target * (len(x) if len(args.target) == 1 else 1), np.int64)
    maps = exp.explain(x, target, return_outputs=True)
    scores = maps["outputs"][exp.runner.explained_output].reshape(len(x), -1)
    labels = scores.argmax(1)
    rows, titles = [], []
    for i in range(len(x)):
        rows.append([input_image(x[i])] + [heatmap(maps[m][i]) for m in methods])
        titles.append(f"#{i} {labels[i]} ({scores[i, labels[i]]:.2f})")
    grid(rows, args.out, titles, ["input"] + list(methods))
    summary = _summary(model, methods, x, labels, scores, maps, args.out)
    txt = os.path.splitext(args.out)[0] + ".txt"
    with open(txt, "w") as fh:
        fh.write(summary)
    print(summary)
    return 0


def _summary(model, methods, x, labels, scores, maps, out) -> str:
    lines = [f"model: {model}", f"inputs: {len(x)} of shape {tuple(x.shape[1:])}", f"methods: {', '.join(methods)}",
             "", "input  predicted  score   " + "  ".join(f"{m[:18]:>18}" for m in methods)]
    for i in range(len(x)):
        sums = "  ".join(f"{float(np.sum(maps[m][i])):>18.4g}" for m in methods)
        lines.append(f"{i:>5}  {labels[i]:>9}  {scores[i, labels[i]]:>6.3f}  {sums}")
    lines += ["", "(columns per method: the sum of the map over the input)", f"figure: {out}", ""]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    from .cli import main
    sys.exit(main(["explain"] + sys.argv[1:]))
