"""``onnxplain sweep``: IG over references and SmoothGrad over noise scales and post-processings (PNG + JSON).

With no arguments: the bundled ImageNet model on the first bundled photo (or the digits MLP
on one digit when the ImageNet model is not installed).
"""
from __future__ import annotations

import os
import sys

from ..compiler.errors import OnnxplainError, InputError
from .sweep import DEFAULT_NOISE, DEFAULT_POSTPROCESS, DEFAULT_REFERENCES


def add_parser(sub):
    from .common import add_figure_options

    p = sub.add_parser(
        "sweep", help="hyper-parameter sweep: IG references, SmoothGrad noise scale and post-processing",
        description="Show how hyper-parameters change the maps: per input, one row of integrated gradients over "
                    "references (black -> gray -> white) and one row per SmoothGrad post-processing (abs, "
                    "square) over increasing noise scales. Writes a PNG and a JSON file of the numbers. With no "
                    "arguments: the bundled ImageNet model on the first bundled photo.")
    p.add_argument("model", nargs="?", help="the ONNX model (default: the bundled ImageNet model)")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or one .npy/.npz array")
    p.add_argument("--index", metavar="I,J,...", help="use only these inputs (default: the first)")
    p.add_argument("--target", type=int, action="append", metavar="CLASS",
                   help="class to explain (once for all inputs or once per input; default: the top class)")
    p.add_argument("--references", default=",".join(DEFAULT_REFERENCES), metavar="R1,R2,...",
                   help="IG references: zeros, black, gray, white, mean or a number (default "
                        f"{','.join(DEFAULT_REFERENCES)})")
    p.add_argument("--noise", default=",".join(f"{v:g}" for v in DEFAULT_NOISE), metavar="S1,S2,...",
                   help="SmoothGrad noise scales, fractions of the input's value range (default "
                        f"{','.join(f'{v:g}' for v in DEFAULT_NOISE)})")
    p.add_argument("--postprocess", default=",".join(DEFAULT_POSTPROCESS), metavar="P1,...",
                   help="SmoothGrad post-processings, one row each: none, abs, square (default "
                        f"{','.join(DEFAULT_POSTPROCESS)})")
    p.add_argument("--steps", type=int, default=32, help="IG steps of every setting (default 32)")
    p.add_argument("--samples", type=int, default=16, help="SmoothGrad samples of every setting (default 16)")
    add_figure_options(p, "onnxplain-sweep.png", view=False)
    p.add_argument("--output", dest="output_name", metavar="NAME",
                   help="the model output to explain (default: the first output)")
    p.add_argument("--no-strip-softmax", action="store_true",
                   help="explain the output as is, even when it is produced by a final Softmax")
    p.add_argument("--batchnorm", default="fold", choices=["fold", "fold_after", "pass", "linear", "linear2"],
                   help="BatchNormalization treatment (see `onnxplain compile --help`)")
    p.set_defaults(no_fold_bn=False)
    return p


def _list(text: str, what: str, conv) -> list:
    try:
        out = [conv(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what}: cannot read {text!r}") from None
    if not out:
        raise InputError(f"{what}: give at least one value")
    return out


def _reference(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def run(args) -> int:
    """Run ``onnxplain sweep``; return the exit code."""
    from ..explain_cmd import bundled_default
    from ..images import load_inputs
    from .common import compile_options, open_model, parse_ints, parse_range, save_json, select
    from .sweep import sweep

    if args.model and not args.inputs:
        raise OnnxplainError("give the inputs (image files, a folder or a .npy/.npz array) after MODEL")
    model, inputs = (args.model, args.inputs) if args.model else bundled_default()[:2]
    info = open_model(model, parse_range(args.value_range))
    x, names = load_inputs(inputs, info.spec, warn=_warn)
    x, names = select(x, names, parse_ints(args.index, "--index") or [0])
    result = sweep(info, x, names=names, targets=args.target,
                   references=_list(args.references, "--references", _reference),
                   noise_scales=_list(args.noise, "--noise", float),
                   postprocess=_list(args.postprocess, "--postprocess", str), steps=args.steps,
                   samples=args.samples, out=args.out, cell_size=args.cell, **compile_options(args))
    save_json(os.path.splitext(args.out)[0] + ".json", {k: v for k, v in result.items() if k != "maps"})
    for s in result["samples"]:
        print(f"{os.path.basename(s['name'])}: class {s['target']} ({s['label']}) p={s['prob']:.4f} "
              f"logit={s['logit']:.3f}")
    for st in result["settings"]:
        print(f"  {st['row']:<22} {st['caption']:<18} sum=" + ", ".join(f"{v['sum']:.4g}" for v in st["stats"]))
    print(f"figure: {args.out}")
    return 0


def _warn(msg: str) -> None:
    print(f"onnxplain sweep: warning: {msg}", file=sys.stderr)
