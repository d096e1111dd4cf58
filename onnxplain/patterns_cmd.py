"""``onnxplain fit-patterns``: fit PatternNet / PatternAttribution patterns on a data set.

Writes an ``.npz`` (one array per linear node, keyed by node name, plus metadata) that
``onnxplain compile -m pattern.net|pattern.attribution --patterns FILE`` bakes into the model.
"""
from __future__ import annotations

import os

import numpy as np

from .compiler.errors import InputError, OnnxplainError


def add_parser(sub):
    p = sub.add_parser(
        "fit-patterns", help="fit the patterns of PatternNet / PatternAttribution on a data set",
        description="Run MODEL on DATA with ONNX Runtime, stream per-neuron statistics of every linear layer "
                    "(Conv, Gemm, MatMul) and write the patterns a = cov[x, y] / (w^T cov[x, y]) (Kindermans et "
                    "al. 2018) to OUT (.npz, keyed by node name, written atomically). Then: onnxplain compile "
                    "MODEL -m pattern.attribution --patterns OUT -o explained.onnx")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="the data set: a .npy array [N, ...] or a .npz (the array named like the model input, "
                        "else 'images', 'x' or 'X', else the first array; several inputs: one array per input "
                        "name); use training-like data")
    p.add_argument("-o", "--out", required=True, help="the patterns file to write (.npz, written atomically)")
    p.add_argument("--estimator", choices=["relu", "linear"], default="relu",
                   help="relu (default): the two-component estimator, statistics over the samples where each "
                        "neuron's output is positive; linear: over every sample")
    p.add_argument("--batch-size", type=int, default=64, help="samples per inference (default 64)")
    p.add_argument("--limit", type=int, metavar="N", help="use at most the first N samples")
    p.add_argument("--batchnorm", default="fold", choices=["fold", "fold_after", "pass", "linear", "linear2"],
                   help="BatchNorm treatment; must be the one used when compiling (default fold)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    return p


def load_data(path: str, input_names: list):
    """Arrays for the model inputs from a .npy or .npz file (memory-mapped where possible)."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    if path.endswith(".npy"):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr if len(input_names) == 1 else {input_names[0]: arr}
    if not path.endswith(".npz"):
        raise InputError(f"{path}: expected a .npy or .npz file")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    with z:
        if len(input_names) > 1:
            missing = [n for n in input_names if n not in z.files]
            if missing:
                raise InputError(f"{path}: the model has inputs {input_names}; the file lacks {missing} "
                                 f"(it holds {z.files})")
            return {n: z[n] for n in input_names}
        for key in (input_names[0], "images", "x", "X"):
            if key in z.files:
                return z[key]
        if not z.files:
            raise InputError(f"{path}: the file holds no array")
        return z[z.files[0]]


def _input_names(model_path: str) -> list:
    from .compiler.graph import load_model, strip_weights

    proto = strip_weights(load_model(model_path, model_path))[0]
    inits = {t.name for t in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in inits and not i.name.startswith("onnxplain")]


def run(args) -> int:
    from .patterns import fit_patterns, save_patterns, summary

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not os.path.isfile(args.model):
        raise OnnxplainError(f"{args.model}: no such file")
    names = [n for n in _input_names(args.model)]
    data = load_data(args.data, names)
    patterns = fit_patterns(args.model, data, estimator=args.estimator, batch_size=args.batch_size,
                            batchnorm=args.batchnorm, limit=args.limit, progress=False if args.quiet else None)
    save_patterns(patterns, args.out)
    if not args.quiet:
        print(summary(patterns))
    print(f"wrote {args.out}")
    return 0
