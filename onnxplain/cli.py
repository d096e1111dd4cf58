"""The ``onnxplain`` command line: ``compile``, ``methods``, ``check``, ``explain``.

Every command exits with 0 on success, 2 on bad input (with one message per
problem on stderr) and never leaves a partial output file.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ._version import __version__
from .compiler.errors import OnnxplainError

EPILOG = """examples:
  onnxplain compile model.onnx -m gradient -m integrated_gradients --param steps=32 -o explained.onnx
  onnxplain check model.onnx -m guided_backprop
  onnxplain methods
  onnxplain explain                      # the bundled default: model, images, methods -> PNG grid
"""


def _params(items: Sequence[str], rules: Optional[str] = None) -> dict:
    out = {"rules": rules} if rules else {}
    for item in items or []:
        if "=" not in item:
            raise OnnxplainError(f"--param '{item}' is not NAME=VALUE (e.g. --param steps=32 or "
                                 "--param integrated_gradients.steps=32)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


class _PatternsAction(argparse.Action):
    """``--patterns FILE``: recorded as the method parameter ``patterns=FILE``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, "param", list(getattr(namespace, "param", None) or []) + [f"patterns={values}"])


def _add_model_options(p: argparse.ArgumentParser, default_method: Optional[str] = None) -> None:
    p.add_argument("-m", "--method", action="append", dest="methods", metavar="METHOD",
                   help="explanation method (repeatable); see `onnxplain methods`"
                   + (f" (default: {default_method})" if default_method else ""))
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="method parameter, for every method that has it (steps=32) or for one "
                        "(integrated_gradients.steps=32); repeatable")
    p.add_argument("--rules", metavar="SPEC",
                   help="rule spec (JSON or YAML file) for method 'lrp': a list of {select: {...}, rule: ...} "
                        "entries, first match wins, optionally on top of a 'base' composite")
    p.add_argument("--patterns", action=_PatternsAction, metavar="FILE",
                   help="fitted patterns (.npz from `onnxplain fit-patterns`) for pattern.net and "
                        "pattern.attribution; the same as --param patterns=FILE")
    p.add_argument("--output", dest="output_name", metavar="NAME",
                   help="the model output to explain (default: the first output)")
    p.add_argument("--input", action="append", dest="inputs", metavar="NAME",
                   help="a model input to explain (repeatable; default: every float input)")
    p.add_argument("--no-strip-softmax", action="store_true",
                   help="explain the output as is, even when it is produced by a final Softmax "
                        "(default: explain the pre-softmax logit, as iNNvestigate and Zennit do)")
    p.add_argument("--batchnorm", default="fold", choices=["fold", "fold_after", "pass", "linear", "linear2"],
                   help="BatchNormalization: fold into the preceding layer where exact (default, as Zennit), "
                        "fold_after (into the following layer where exact, else the preceding), pass (keep; "
                        "LRP passes relevance through), linear (keep as its own linear layer, LRP-epsilon), "
                        "linear2 (as two linear maps)")
    p.add_argument("--no-fold-bn", action="store_true", help="shorthand for --batchnorm pass")
    p.add_argument("--health", action="store_true",
                   help="add monitoring outputs: explained_value [N], <method>/relevance_sum [N] and "
                        "<method>/finite [N] (bool)")


# Modules that add one sub-command each: ``add_parser(subparsers) -> parser`` and ``run(args) -> int``.
COMMAND_MODULES = ["explain_cmd", "patterns_cmd", "apps.analyse_cmd", "apps.compare_cmd", "apps.sweep_cmd",
                   "apps.perturb_cmd", "apps.audit_cmd"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxplain", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile ONNX models into ONNX models whose extra outputs are explanation maps.")
    parser.add_argument("--version", action="version", version=f"onnxplain {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("compile", help="compile MODEL into a model with explanation outputs",
                       description="Compile MODEL into OUT: the same inputs and outputs, plus an optional int64 "
                                   "input 'target' [N] (class per sample; -1 or absent = top class) and one output "
                                   "'<method>/<input>' per method and explained input.")
    p.add_argument("model", help="the ONNX model (.onnx; external data is read next to it)")
    p.add_argument("-o", "--out", required=True, help="where to write the compiled model (written atomically)")
    p.add_argument("--float16", action="store_true",
                   help="compute in float16 (for GPUs): weights and heavy ops float16, inputs/outputs and fragile "
                        "parts (LRP stabilisers, divisions, softmax, reductions) float32; see docs/cuda.md")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="the ONNX Runtime provider the file is for (it loads on any): 'cuda' leaves out the LRP "
                        "scheduling hints (lower memory on the CPU, host-device waits on a GPU) and replaces "
                        "MaxUnpool (no CUDA kernel); for files run in plain onnxruntime-gpu (default: cpu)")
    _add_model_options(p)

    p = sub.add_parser("methods", help="list the methods with their parameters")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")

    p = sub.add_parser("check", help="print every node, its op and the rule each method gives it",
                       description="Dry-run compilation: list every node with its rule, then every problem "
                                   "(all unsupported nodes, not only the first). Exit code 2 if any problem.")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--all", action="store_true", help="also list nodes off the explained path")
    _add_model_options(p, "gradient")

    import importlib

    for mod_name in COMMAND_MODULES:
        mod = importlib.import_module(f".{mod_name}", __package__)
        mod.add_parser(sub).set_defaults(run=mod.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``onnxplain`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except OnnxplainError as exc:
        print(f"onnxplain {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args) -> int:
    from . import api

    if getattr(args, "run", None) is not None:
        return args.run(args)
    if args.command == "methods":
        print(methods_table(markdown=args.markdown))
        return 0
    opts = dict(output=args.output_name, inputs=args.inputs, strip_softmax=not args.no_strip_softmax,
                batchnorm="pass" if args.no_fold_bn and args.batchnorm == "fold" else args.batchnorm)
    if args.command == "compile":
        opts["health"] = args.health
        opts["precision"] = "float16" if args.float16 else "float32"
        opts["device"] = args.device
    if args.command == "compile":
        if not args.methods:
            raise OnnxplainError("give at least one method with -m (see `onnxplain methods`)")
        api.compile_file(args.model, args.out, args.methods, params=_params(args.param, args.rules), **opts)
        print(f"wrote {args.out}")
        return 0
    if args.command == "check":
        rows, problems = api.check(args.model, args.methods or ["gradient"], **opts, **_params(args.param, args.rules))
        print(check_table(rows, show_all=args.all))
        if problems:
            print(f"\n{len(problems)} problem(s):", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 2
        return 0
    return args.run(args)


def methods_table(markdown: bool = False) -> str:
    """The method registry as text (or Markdown)."""
    from .agnostic import AGNOSTIC
    from .rules.methods import METHODS

    lines = []
    if markdown:
        lines += ["| method | what it computes | parameters (default) |", "| --- | --- | --- |"]
    for m in list(METHODS.values()) + list(AGNOSTIC.values()):  # agnostic: run by Explainer/explain only
        params = ", ".join(f"{p.name}={p.default}" for p in m.params) or "-"
        if markdown:
            lines.append(f"| `{m.name}` | {m.summary} ({m.reference}) | {params} |")
        else:
            lines.append(f"{m.name}\n    {m.summary} ({m.reference})")
            for p in m.params:
                lines.append(f"    - {p.name} (default {p.default!r}): {p.doc}")
    return "\n".join(lines)


def check_table(rows, show_all: bool = False) -> str:
    """Format ``check`` rows: node, op type, then the rule per method."""
    methods = list(rows[0][2]) if rows else []
    shown = [r for r in rows if show_all or any(v != "-" for v in r[2].values())]
    header = ["node", "op"] + methods
    body = [[name, op] + [str(r.get(m) or "NO RULE") for m in methods] for name, op, r in shown]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)] if body else [len(h) for h in header]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    out += [fmt.format(*row) for row in body]
    out.append(f"({len(shown)} of {len(rows)} nodes on the explained path" + (")" if not show_all else "; all shown)"))
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
