"""``onnxplain audit``: share of |relevance| inside each image's bounding box, per class ("Clever Hans").

With no model it audits the bundled poisoned MNIST CNN (class 7 was trained with a white square in the
top-left corner) on the 1000 bundled test digits (those of class 7 carrying the square) with their digit
boxes and the artefact box as a named region, and writes ``onnxplain-audit.png``, ``.json`` and ``.txt``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from ..compiler.errors import InputError
from .perturb_cmd import (_from_pixels, add_compile_options, add_data_options, compile_options, entry_params,
                          load_data, open_info, parse_range, range_params, resolve_model)


def add_parser(sub):
    p = sub.add_parser("audit", help="data-set audit: share of |relevance| inside each image's box, per class",
                       description="Explain every image with one method and measure the share of absolute relevance "
                                   "inside its bounding box (or mask); rank classes and images by that share (lowest "
                                   "first: where the network looks at the background, a 'Clever Hans' sign) and draw "
                                   "the worst images and the mean |relevance| map per class. Writes OUT (PNG), "
                                   "OUT.json and OUT.txt. With no MODEL: the bundled poisoned MNIST CNN on the bundled "
                                   "test digits with digit boxes and the artefact box.")
    p.add_argument("model", nargs="?",
                   help="the ONNX model, or a bundled model name (default: mnist_cnn_poisoned; mnist_cnn is the clean one)")
    add_data_options(p)
    p.add_argument("--boxes", metavar="FILE",
                   help="boxes [row0, col0, row1, col1] (end exclusive) per image: .json (a list, or {'boxes': list or "
                        "{file name: box}, 'labels': ...}), .npy [N, 4] or .npz (key 'boxes'); for image folders in the "
                        "files' own pixels (mapped through the resize), for arrays in input pixels. Boxes reaching "
                        "outside the image are clipped (warning); empty ones are an error. Default: 'boxes' in --data")
    p.add_argument("--masks", metavar="FILE", help="boolean masks [N, H, W] (.npy or .npz key 'masks') instead of boxes")
    p.add_argument("--labels", metavar="FILE", help="true classes [N] (.npy, .json list); default: 'labels' in --data")
    p.add_argument("--region", action="append", default=[], metavar="NAME=R0,C0,R1,C1",
                   help="a fixed region whose share is reported too (e.g. a suspected artefact), repeatable")
    p.add_argument("-m", "--method", default="lrp.epsilon_plus_flat",
                   help="the explanation method (default lrp.epsilon_plus_flat; see `onnxplain methods`)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="method parameter (repeatable)")
    p.add_argument("--explain", choices=["predicted", "true"], default="predicted",
                   help="explain the predicted class (default) or the true class")
    p.add_argument("--by", choices=["true", "predicted"], default=None,
                   help="aggregate per true class (default when labels exist) or per predicted class")
    p.add_argument("--bundled-images", choices=["poisoned", "clean"], default="poisoned",
                   help="with the bundled data: the test digits with the artefact on class 7 (default) or clean")
    p.add_argument("--worst", type=int, default=8, help="images with the lowest share to draw (default 8)")
    p.add_argument("--batch-size", type=int, default=256, help="images per inference (default 256)")
    p.add_argument("-o", "--out", default="onnxplain-audit.png", help="the PNG; OUT.json and OUT.txt beside it")
    add_compile_options(p)
    return p


def load_boxes(path: str, n: int, names=None, sizes=None, spec=None) -> dict:
    """``{"boxes"|"masks": array, "labels": array or None}`` from a boxes/masks file."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such boxes file")
    labels = None
    try:
        if path.lower().endswith(".json"):
            with open(path) as fh:
                data = json.load(fh)
            if isinstance(data, dict) and "boxes" in data:
                labels, data = data.get("labels"), data["boxes"]
            boxes = _by_name(data, names, "box") if isinstance(data, dict) else np.asarray(data)
            if isinstance(labels, dict):
                labels = _by_name(labels, names, "label")
        elif path.lower().endswith(".npy"):
            boxes = np.load(path, allow_pickle=False)
        elif path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "masks" in z.files and "boxes" not in z.files:
                    return {"masks": z["masks"], "labels": z["labels"] if "labels" in z.files else None}
                if "boxes" not in z.files:
                    raise InputError(f"{path}: no 'boxes' or 'masks' array (has {z.files})")
                boxes, labels = z["boxes"], (z["labels"] if "labels" in z.files else None)
        else:
            raise InputError(f"{path}: boxes must be a .json, .npy or .npz file")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the boxes ({exc})") from None
    boxes = np.asarray(boxes)
    if boxes.ndim == 3:
        return {"masks": boxes, "labels": None if labels is None else np.asarray(labels)}
    if boxes.ndim != 2 or boxes.shape[1:] != (4,) or boxes.dtype.kind not in "iuf":
        raise InputError(f"{path}: expected [N, 4] boxes [row0, col0, row1, col1], got shape {boxes.shape}")
    if len(boxes) != n:
        raise InputError(f"{path}: {len(boxes)} boxes for {n} images")
    if sizes is not None:
        boxes = _resize_boxes(boxes, sizes, spec)
    return {"boxes": boxes, "labels": None if labels is None else np.asarray(labels)}


def _by_name(d: dict, names, what: str) -> list:
    if names is None:
        raise InputError(f"{what}es given by file name need image files as --data")
    missing = [nm for nm in names if nm not in d]
    if missing:
        raise InputError(f"no {what} for {len(missing)} image(s): {', '.join(missing[:10])}")
    return [d[nm] for nm in names]


def _resize_boxes(boxes, sizes, spec) -> np.ndarray:
    """Boxes in the files' pixels -> model-input pixels, through :func:`onnxplain.images.fit` (scale so the
    image covers the input, rounded, then center crop); starts rounded down, ends up."""
    b = np.asarray(boxes, np.float64)
    if np.any(b != np.round(b)):
        raise InputError("box coordinates must be whole pixel indices")
    h, w = spec.height, spec.width
    h0, w0 = np.asarray(sizes, np.float64).T
    k = np.maximum(w / w0, h / h0)
    w1, h1 = np.maximum(w, np.round(w0 * k)), np.maximum(h, np.round(h0 * k))
    left, top = (w1 - w) // 2, (h1 - h) // 2
    sy, sx = h1 / h0, w1 / w0
    return np.stack([np.floor(b[:, 0] * sy - top), np.floor(b[:, 1] * sx - left),
                     np.ceil(b[:, 2] * sy - top), np.ceil(b[:, 3] * sx - left)], 1).astype(np.int64)


def parse_regions(items) -> dict:
    out = {}
    for item in items:
        name, _, box = item.partition("=")
        try:
            vals = [int(v) for v in box.split(",")]
        except ValueError:
            vals = []
        if not name or len(vals) != 4:
            raise InputError(f"--region must be NAME=R0,C0,R1,C1 (whole numbers), got {item!r}")
        out[name.strip()] = vals
    return out


def _labels_file(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such labels file")
    try:
        if path.lower().endswith(".json"):
            with open(path) as fh:
                return np.asarray(json.load(fh))
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the labels ({exc})") from None


def _data(args, model, info) -> tuple:
    """``(x, labels, boxes, masks, regions)`` from the options (or the bundled default)."""
    from .. import bundled

    regions = parse_regions(args.region)
    if args.data:
        d = load_data(args.data, info, args.limit)
    elif _bundled_mnist(model):
        t = bundled.mnist_test(poisoned=args.bundled_images == "poisoned")
        n = args.limit or len(t["images"])
        d = {"x": _from_pixels(t["images"][:n], info.spec, "bundled digits"), "labels": t["labels"][:n], "boxes": t["boxes"][:n],
             "masks": None, "names": None, "sizes": None}
        regions.setdefault("artefact", list(t["artefact_box"]))
    else:
        raise InputError("give the images with --data (bundled data exists for the bundled MNIST models only)")
    boxes, masks, labels = d["boxes"], d["masks"], d["labels"]
    if args.boxes or args.masks:
        got = load_boxes(args.boxes or args.masks, len(d["x"]), d["names"], d["sizes"], info.spec)
        boxes, masks = got.get("boxes"), got.get("masks")
        labels = got["labels"] if got["labels"] is not None else labels
        if args.limit and masks is not None:
            masks = masks[:args.limit]
    if args.labels:
        labels = _labels_file(args.labels)
    if boxes is None and masks is None:
        raise InputError("no boxes: give --boxes or --masks (or a 'boxes' array in the --data archive)")
    if boxes is not None and masks is not None:
        boxes = None if args.masks else boxes
        masks = masks if args.masks else None
    return d["x"], labels, boxes, masks, regions


def _bundled_mnist(model: str) -> bool:
    from .. import bundled

    name = os.path.basename(model)
    return name.startswith("mnist_cnn") and os.path.dirname(os.path.abspath(model)) == bundled.DATA_DIR


def run(args) -> int:
    from .audit import audit, save_audit
    from .evaluation_plots import plot_audit

    if args.worst < 0 or args.batch_size < 1:
        raise InputError("--worst must be >= 0 and --batch-size >= 1")
    model = resolve_model(args.model, "mnist_cnn_poisoned")
    value_range = parse_range(args.value_range)
    info = open_info(model, value_range)
    x, labels, boxes, masks, regions = _data(args, model, info)
    user = entry_params(args.param)
    params = {k.split(".", 1)[1]: v for k, v in range_params([args.method], info, user).items()}
    params.update(user)
    if args.rules:
        params["rules"] = args.rules
    to_chw = None
    if info.spec is not None and info.spec.layout != "NCHW":
        spec = info.spec
        to_chw = lambda m: np.stack([spec.to_chw(s) for s in m])  # noqa: E731
    res = audit(model, x, boxes, masks, labels, method=args.method, params=params, explain=args.explain, by=args.by,
                regions=regions, to_chw=to_chw, batch_size=args.batch_size, **compile_options(args))
    res.settings.update({"model": model, "data": args.data or f"bundled ({args.bundled_images})"})
    base = os.path.splitext(args.out)[0]
    shown = x if to_chw is None else to_chw(x)
    plot_audit(res, shown, args.out, worst=args.worst, class_names=info.labels)
    save_audit(res, base + ".json", base + ".txt", info.labels)
    print(res.table(info.labels))
    print(f"wrote {args.out}, {base}.json, {base}.txt")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from ..cli import main
    sys.exit(main(["audit"] + sys.argv[1:]))
