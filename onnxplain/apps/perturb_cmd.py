"""``onnxplain perturb``: perturbation analysis (region perturbation, AOPC) of several methods.

With no model it evaluates the bundled MNIST CNN on the first 200 bundled test digits with six
methods and the random baseline, and writes ``onnxplain-perturb.png`` (curves), ``.json`` and ``.md``
(AOPC table) beside it.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from ..compiler.errors import InputError

DEFAULT_METHODS = ["gradient", "input_t_gradient", "integrated_gradients", "guided_backprop",
                   "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"]
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def add_parser(sub):
    p = sub.add_parser("perturb", help="perturbation analysis: remove the most relevant regions first, AOPC per method",
                       description="Evaluate explanation methods by region perturbation (Samek et al. 2017): split "
                                   "each input into regions, remove them most relevant first (replaced by uniform "
                                   "noise by default), record the explained logit after each step and report the "
                                   "area over the perturbation curve (AOPC, higher = better) per method, with a "
                                   "random attribution as baseline. With no MODEL: the bundled MNIST CNN on 200 "
                                   "bundled test digits.")
    p.add_argument("model", nargs="?", help="the ONNX model, or the name of a bundled model (default: mnist_cnn)")
    add_data_options(p)
    p.add_argument("-m", "--method", action="append", dest="methods", metavar="METHOD[:KEY=VALUE...]",
                   help="method to evaluate (repeatable); the same method may be given several times with its own "
                        "parameters, e.g. -m integrated_gradients:reference=black -m integrated_gradients:reference=gray "
                        f"(default: {', '.join(DEFAULT_METHODS)})")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="parameter for every method that has it (steps=32) or for one (integrated_gradients.steps=32)")
    p.add_argument("--region", default=None, metavar="SIZE",
                   help="region size: 4 or 4x4 (images), or 8x (1-D windows along the last axis); default "
                        "min(H, W)//7 clipped to 1..16 (4x4 on MNIST), single features for 1-D inputs")
    p.add_argument("--steps", type=int, default=None,
                   help="perturbation steps L (default: until all regions are removed, at most 100)")
    p.add_argument("--per-step", type=int, default=1, help="regions removed per step (default 1)")
    p.add_argument("--fill", default="noise",
                   help="what a removed region becomes: noise (uniform in the input range, default, as Samek et al.), "
                        "mean (per image and channel), zero, constant:VALUE, blur or blur:SIGMA")
    p.add_argument("--order", default="morf", choices=["morf", "lerf"],
                   help="morf: most relevant first (default; higher AOPC = better), lerf: least relevant first")
    p.add_argument("--region-score", choices=["sum", "abs"], default=None,
                   help="score of a region: the sum of the map (relevance) or of its absolute values (default: abs for "
                        "gradient/smoothgrad/vargrad, sum otherwise)")
    p.add_argument("--no-random", action="store_true", help="leave out the random-attribution baseline")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise fill and of the random baseline (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="perturbed inputs per inference (default 256)")
    p.add_argument("-o", "--out", default="onnxplain-perturb.png",
                   help="the PNG of the curves; OUT.json (curves, AOPC per image) and OUT.md (AOPC table) beside it")
    add_compile_options(p)
    return p


def add_data_options(p) -> None:
    """--data, --range, --limit (shared with ``audit``)."""
    p.add_argument("--data", metavar="PATH",
                   help="inputs: a .npz (key 'images', optional 'labels', 'boxes', 'masks') or .npy array [N, ...] "
                        "(uint8 pixels are preprocessed with the model's onnxplain.preprocess metadata or --range; "
                        "floats are taken as model inputs), or an image file or folder (default: bundled data)")
    p.add_argument("--range", dest="value_range", default=None, metavar="LOW,HIGH",
                   help="input range that pixels 0..255 map to, for models without onnxplain.preprocess metadata "
                        "(default 0,1); also the range of the noise fill")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N inputs only")


def add_compile_options(p) -> None:
    """--output, --no-strip-softmax, --batchnorm, --rules (shared with ``audit``)."""
    p.add_argument("--rules", metavar="SPEC", help="rule spec (JSON/YAML) for the method 'lrp'")
    p.add_argument("--output", dest="output_name", metavar="NAME",
                   help="the model output to explain and score (default: the first output)")
    p.add_argument("--no-strip-softmax", action="store_true",
                   help="explain and score the output as is, even after a final Softmax (default: the logit)")
    p.add_argument("--batchnorm", default="fold", choices=["fold", "fold_after", "pass", "linear", "linear2"],
                   help="BatchNormalization treatment for LRP (see `onnxplain compile --help`)")


# ----------------------------------------------------------------------------------------------- loading
def resolve_model(name, default: str) -> str:
    """A model path: ``name`` if it is a file, else a bundled model of that name; ``default`` if None."""
    if name is not None and os.path.isfile(name):
        return name
    try:
        from .. import bundled
    except ImportError:  # pragma: no cover - the bundled data is part of the package
        raise InputError(f"{name or default}: no such model file") from None
    try:
        return bundled.path(name or default)
    except bundled.BundledError:
        raise InputError(f"{name}: no such model file (nor a bundled model: {', '.join(bundled.names())})") from None


def parse_range(text):
    from .common import parse_range as parse

    return parse(text)


def open_info(model_path: str, value_range=None):
    """:class:`~onnxplain.apps.common.ModelInfo` of the model (its spec from the metadata or guessed)."""
    from .common import open_model

    return open_model(model_path, value_range)


def input_range(info, value_range=None):
    """``(low, high)`` of the model input for the noise fill: ``--range``, else from the spec (per channel
    for NCHW inputs where the channels differ), else None (the data's min and max)."""
    if value_range is not None:
        return value_range
    if info.spec is None:
        return None
    lo, hi = np.asarray(info.spec.low, np.float64), np.asarray(info.spec.high, np.float64)
    if info.spec.layout == "NCHW" and not (np.allclose(lo, lo[0]) and np.allclose(hi, hi[0])):
        return lo, hi
    return float(lo.min()), float(hi.max())


def load_data(path: str, info, limit=None) -> dict:
    """``{"x", "labels", "boxes", "masks", "names", "sizes"}`` from an array file or images (see ``--data``).

    Image files are resized and center-cropped to the model's size (:func:`onnxplain.images.fit`);
    ``sizes`` keeps each file's ``(height, width)`` for box coordinates."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    out = _load_array(path, info.spec) if path.lower().endswith((".npz", ".npy")) else _load_images(path, info.spec)
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        out = {k: (v[:limit] if v is not None else None) for k, v in out.items()}
    return out


def _load_array(path: str, spec) -> dict:
    try:
        if path.lower().endswith(".npy"):
            arrays = {"images": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the array ({exc})") from None
    if not arrays:
        raise InputError(f"{path}: the archive holds no arrays")
    x = arrays.get("images", arrays.get("x", next(iter(arrays.values()))))
    if x.dtype.kind not in "uif" or x.ndim < 2 or len(x) == 0:
        raise InputError(f"{path}: expected a non-empty numeric array [N, ...], got {x.dtype} {x.shape}")
    if x.dtype == np.uint8:
        x = _from_pixels(x, spec, path)
    names = [f"{os.path.basename(path)}[{i}]" for i in range(len(x))]
    return {"x": np.asarray(x, np.float32), "labels": arrays.get("labels"), "boxes": arrays.get("boxes"),
            "masks": arrays.get("masks"), "names": names, "sizes": None}


def _from_pixels(x, spec, path) -> np.ndarray:
    """uint8 pixels ``[N, H, W]`` or ``[N, H, W, C]`` -> model inputs with the spec."""
    if spec is None:
        raise InputError(f"{path}: uint8 pixels need a model with an image input or onnxplain.preprocess metadata; "
                         "or store float model inputs")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1:] != (spec.height, spec.width, spec.channels):
        raise InputError(f"{path}: uint8 images of shape {x.shape[1:]} do not fit the model's "
                         f"{spec.height}x{spec.width}x{spec.channels} (give [N, H, W] or [N, H, W, C] pixels)")
    return spec.from_pixels(x)


def _load_images(path: str, spec) -> dict:
    from PIL import Image

    from ..images import find_images, load_pixels

    if spec is None:
        raise InputError(f"{path}: images need a model with an image input; pass a .npy/.npz array instead")
    files = find_images(path)
    sizes = []
    for f in files:
        try:
            with Image.open(f) as img:
                sizes.append((img.height, img.width))
        except (OSError, ValueError) as exc:
            raise InputError(f"{f}: cannot read the image ({exc})") from None
    x = spec.from_pixels(load_pixels(files, spec))
    return {"x": x, "labels": None, "boxes": None, "masks": None, "names": [os.path.basename(f) for f in files],
            "sizes": np.array(sizes)}


def entry_params(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--param '{item}' is not NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def parse_region(text):
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        sizes = tuple(int(p) for p in parts if p != "")
    except ValueError:
        raise InputError(f"--region must be SIZE, HxW or SIZEx (1-D), got {text!r}") from None
    if not sizes:
        raise InputError(f"--region must be SIZE, HxW or SIZEx (1-D), got {text!r}")
    return sizes if len(parts) > 1 else sizes[0]


def parse_fill(text: str) -> dict:
    name, _, arg = text.partition(":")
    if name not in ("noise", "mean", "zero", "constant", "blur"):
        raise InputError(f"--fill must be noise, mean, zero, constant:VALUE or blur[:SIGMA], got {text!r}")
    try:
        if name == "constant":
            return {"fill": name, "fill_value": float(arg)}
        if name == "blur" and arg:
            return {"fill": name, "blur_sigma": float(arg)}
    except ValueError:
        raise InputError(f"--fill {text!r}: {arg!r} is not a number") from None
    if arg and name not in ("constant", "blur"):
        raise InputError(f"--fill {name} takes no value, got {text!r}")
    return {"fill": name}


def compile_options(args) -> dict:
    opts = {"strip_softmax": not args.no_strip_softmax, "batchnorm": args.batchnorm}
    if args.output_name:
        opts["output"] = args.output_name
    return opts


def range_params(methods, info, user: dict) -> dict:
    """``method.low``/``method.high`` from the model's input range for the methods that take them (z^B,
    IG's black/white references), unless the user gave them."""
    from .common import method_params

    names = sorted({m.split(":")[0] for m in methods})
    return {f"{m}.{k}": v for m, d in method_params(names, info, user).items() for k, v in d.items()}


# ----------------------------------------------------------------------------------------------- run
def run(args) -> int:
    from .perturbation import compare_methods, plot_curves, save_text

    if args.batch_size < 1:
        raise InputError("--batch-size must be >= 1")
    model = resolve_model(args.model, "mnist_cnn")
    value_range = parse_range(args.value_range)
    info = open_info(model, value_range)
    x = _default_data(args, model, info)["x"]
    methods = args.methods or DEFAULT_METHODS
    user = entry_params(args.param)
    params = range_params(methods, info, user)
    params.update(user)
    if args.rules:
        params["rules"] = args.rules
    res = compare_methods(model, x, methods, params=params, compile_kwargs=compile_options(args),
                          region=parse_region(args.region), steps=args.steps, per_step=args.per_step,
                          value_range=input_range(info, value_range), order=args.order,
                          region_score=args.region_score, seed=args.seed, random_baseline=not args.no_random,
                          batch_size=args.batch_size, **parse_fill(args.fill))
    base = os.path.splitext(args.out)[0]
    summary = res.to_dict()
    summary["model"], summary["data"] = model, args.data or "bundled"
    md = (f"Perturbation analysis of `{os.path.basename(model)}` on {len(x)} inputs "
          f"({res.settings['order'].upper()}, regions {res.settings['region']}, {res.settings['steps']} steps, "
          f"fill {res.settings['fill']}):\n\n" + res.table(markdown=True) + "\n")
    plot_curves(res, args.out)
    save_text(json.dumps(summary, indent=1), base + ".json")
    save_text(md, base + ".md")
    print(res.table(markdown=False))
    print(f"\nwrote {args.out}, {base}.json, {base}.md")
    return 0


def _default_data(args, model: str, info) -> dict:
    """``--data``, else the bundled inputs of a bundled model (200 MNIST test digits, or the photos)."""
    if args.data:
        return load_data(args.data, info, args.limit)
    from .. import bundled

    name = os.path.basename(model)
    if os.path.dirname(os.path.abspath(model)) == os.path.dirname(bundled.path("mnist_cnn")):
        if name.startswith("mnist_cnn"):
            d = bundled.mnist_test(poisoned=name.startswith("mnist_cnn_poisoned"))
            n = args.limit or 200
            return {"x": _from_pixels(d["images"][:n], info.spec, "bundled digits"), "labels": d["labels"][:n],
                    "boxes": d["boxes"][:n], "masks": None, "names": None, "sizes": None}
        if bundled.photos() and info.spec is not None and info.spec.channels == 3:
            return load_data(os.path.dirname(bundled.photos()[0]), info, args.limit)
    raise InputError("give the inputs with --data (bundled inputs exist for the bundled models only)")


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main
    sys.exit(main(["perturb"] + sys.argv[1:]))
