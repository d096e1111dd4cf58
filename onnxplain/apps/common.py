"""What the applications share: a model with its preprocess spec and labels, scores, method parameters, cells.

* :class:`ModelInfo` - a model file with its input, preprocess spec (:mod:`onnxplain.images`) and class names.
* :class:`Scorer` - plain ONNX Runtime scores: the pre-softmax logits and the softmax probabilities.
* :func:`method_params` - fills ``low``/``high`` of methods that need the input range (IG's black and
  white references, the z^B rule) from the model's spec, unless the user gave them.
* :func:`cell` - one picture of a map: a heatmap for attributions, the projection into the input range
  for signal methods (PatternNet).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..compiler.errors import InputError
from ..images import Preprocess, labels as read_labels, read_spec
from ..runtime import visualize as vz

#: methods whose output is a signal (an estimate of the input), drawn by projection, not as a heatmap
SIGNAL_METHODS = ("pattern.net",)


@dataclass
class ModelInfo:
    """A model file and what the applications need to know about it.

    Attributes
    ----------
    path : str
    proto : onnx.ModelProto
    input_name : str
    input_shape : list
        Declared dimensions (ints or names).
    spec : Preprocess or None
        None when the input is no image layout (arrays only).
    labels : list of str
        Class names (``"0"``, ``"1"``, ... when the model has none).
    output : str or None
        The explained output when none is given: the first floating-point output (a scikit-learn
        classifier's first output is its int64 label).
    """

    path: str
    proto: object
    input_name: str
    input_shape: list
    spec: Optional[Preprocess]
    labels: list = field(default_factory=list)
    output: Optional[str] = None

    def opts(self, compile_opts: dict) -> dict:
        """``compile_opts`` with ``output`` defaulting to :attr:`output`."""
        out = dict(compile_opts)
        if not out.get("output"):
            out["output"] = self.output
        return out

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def label(self, k: int) -> str:
        return self.labels[k] if 0 <= k < len(self.labels) else str(k)

    def chw(self, sample: np.ndarray) -> np.ndarray:
        """One sample (input or map) as ``[C, H, W]`` for drawing."""
        if self.spec is not None:
            return self.spec.to_chw(sample)
        a = np.asarray(sample)
        if a.ndim == 3:
            return a
        if a.ndim == 2:
            return a[None]
        side = int(np.sqrt(a.size))
        if side * side == a.size:
            return a.reshape(1, side, side)
        return a.reshape(1, 1, -1)

    def input_range(self, x: Optional[np.ndarray] = None):
        """``(low, high)`` of the input for drawing: from the spec, else the batch's min and max."""
        if self.spec is not None:
            return self.spec.low, self.spec.high
        return (float(np.min(x)), float(np.max(x))) if x is not None else (None, None)


def open_model(path: str, value_range=None) -> ModelInfo:
    """Load ``path`` (no external data needed) with its spec (or one guessed with ``value_range``) and labels."""
    import onnx

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such model file")
    try:
        proto = onnx.load(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types
        raise InputError(f"{path}: not a readable ONNX model ({exc.__class__.__name__}: {exc})") from None
    inits = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise InputError(f"{path}: the applications explain models with one input; it has "
                         f"{[i.name for i in inputs]}")
    inp = inputs[0]
    shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
             for d in inp.type.tensor_type.shape.dim]
    try:
        spec = read_spec(proto, shape, value_range)
    except InputError:
        if any(p.key == "onnxplain.preprocess" for p in proto.metadata_props):
            raise
        spec = None
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    output = next((o.name for o in proto.graph.output if o.type.tensor_type.elem_type in floats), None)
    return ModelInfo(path, proto, inp.name, shape, spec, read_labels(proto), output)


class Scorer:
    """Logits and softmax probabilities of a model's explained output with plain ONNX Runtime.

    The logit is the input of a final Softmax/LogSoftmax when the output is produced by one
    (through Identity nodes), else the output itself; ``probs = softmax(logits)``.

    Parameters
    ----------
    proto : onnx.ModelProto
        The original model.
    output : str, optional
        The explained output (default: the first).
    """

    def __init__(self, proto, output: Optional[str] = None):
        import onnx

        from ..runtime.session import make_session

        model = onnx.ModelProto()
        model.CopyFrom(proto)
        out = output or model.graph.output[0].name
        self.logit_name = _logit_tensor(model, out)
        if self.logit_name not in [o.name for o in model.graph.output]:
            model.graph.output.append(onnx.helper.make_tensor_value_info(self.logit_name, onnx.TensorProto.FLOAT,
                                                                         None))
        self.session = make_session(model, ["CPUExecutionProvider"])
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = [d if isinstance(d, int) else None for d in first.shape]

    def __call__(self, x: np.ndarray) -> tuple:
        """``(logits, probs)``, float64 ``[N, K]``; an input of the wrong shape is an :class:`InputError`."""
        from ..runtime.session import check_array

        x = check_array(self.input_name, x, self.input_shape, np.float32)
        logits = self.session.run([self.logit_name], {self.input_name: x})[0]
        logits = np.asarray(logits, np.float64).reshape(len(x), -1)
        return logits, softmax(logits)


def _logit_tensor(model, output: str) -> str:
    from ..compiler.head import final_softmax, producers_of

    n = final_softmax(producers_of(model), output)
    return output if n is None else n.input[0]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def method_params(methods: Sequence[str], info: ModelInfo, user: Optional[dict] = None) -> dict:
    """``{method: {param: value}}`` giving ``low``/``high`` from the model's spec to methods that take them.

    A value given by the user (``low`` or ``<method>.low``) is left alone. Per-channel values are
    given only for NCHW inputs (the channel axis 1); other layouts get the overall minimum / maximum.
    """
    from ..rules.methods import METHODS

    user = dict(user or {})
    out = {m: {} for m in methods}
    if info.spec is None:
        return out
    lo, hi = info.spec.low, info.spec.high
    if info.spec.layout != "NCHW" or np.allclose(lo, lo[0]) and np.allclose(hi, hi[0]):
        lo, hi = [float(lo.min())], [float(hi.max())]
    for m in methods:
        method = METHODS.get(m)
        for key, v in (("low", lo), ("high", hi)):
            if method is not None and method.param(key) is not None and key not in user and f"{m}.{key}" not in user:
                out[m][key] = float(v[0]) if len(v) == 1 else [float(a) for a in v]
    return out


def is_signal(method: str) -> bool:
    return any(method == s or method.startswith(s + ".") for s in SIGNAL_METHODS)


def cell(method: str, x_chw: np.ndarray, r_chw: np.ndarray, low, high, view: str = "heatmap",
         **opts) -> np.ndarray:
    """The picture of one map: ``view`` (see :data:`onnxplain.runtime.visualize.KINDS`), or the signal
    projection for signal methods (PatternNet), whatever ``view`` is."""
    if is_signal(method):
        return vz.render("signal", x_chw, r_chw, low, high)
    return vz.render(view, x_chw, r_chw, low, high, **opts)


def map_stats(r: np.ndarray) -> dict:
    """Numbers of one map: sum, sum of ``|r|``, min, max, share of positive mass."""
    r = np.asarray(r, np.float64)
    a = np.abs(r).sum()
    return {"sum": float(r.sum()), "abs_sum": float(a), "min": float(r.min()), "max": float(r.max()),
            "positive_share": float(np.clip(r, 0, None).sum() / a) if a > 0 else 0.0}


def save_json(path: str, data) -> None:
    """Write ``data`` as JSON atomically."""
    vz.atomic_write(path, json.dumps(data, indent=1, default=_jsonable), binary=False)


def save_text(path: str, text: str) -> None:
    """Write ``text`` atomically."""
    vz.atomic_write(path, text, binary=False)


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serializable: {type(v)}")


def parse_range(text: Optional[str]):
    """``"LOW,HIGH"`` -> ``(low, high)`` (None passes through)."""
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--range must be LOW,HIGH (two numbers), got {text!r}") from None
    if not hi > lo:
        raise InputError(f"--range must have LOW < HIGH, got {text!r}")
    return lo, hi


def display_name(name: str, n: int = 20) -> str:
    """A file or array-row name for a figure: the base name, ``.npz[3]`` shortened to ``[3]``, cut to ``n``."""
    import re

    base = re.sub(r"\.np[yz](\[\d+\])$", r"\1", os.path.basename(str(name)))
    return short(base, n)


def short(name: str, n: int = 24) -> str:
    """``name`` cut to ``n`` characters."""
    name = str(name)
    return name if len(name) <= n else name[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------
# command-line pieces shared by the application commands

VIEWS = ("heatmap", "graymap", "scaled", "masked", "blend")


def add_figure_options(p, out_default: str, view: bool = True) -> None:
    """``--range``, ``--view`` (when ``view``), ``--cell`` and ``-o``."""
    p.add_argument("--range", dest="value_range", default=None, metavar="LOW,HIGH",
                   help="the input range that image pixels 0..255 map to, for models without an "
                        "'onnxplain.preprocess' metadata entry (default 0,1)")
    if view:
        p.add_argument("--view", default="heatmap", choices=VIEWS,
                       help="picture of each map: signed heatmap (default), graymap of |r|, input scaled by |r|, "
                            "input masked to its most relevant 20%%, heatmap blended over the input (signal "
                            "methods such as PatternNet are always projected into the input range)")
    p.add_argument("--cell", type=int, default=128, metavar="PIXELS", help="side of a grid cell (default 128)")
    p.add_argument("-o", "--out", default=out_default,
                   help=f"the PNG figure; OUT.json (the numbers) is written beside it (default {out_default})")


def compile_options(args) -> dict:
    """``output``, ``strip_softmax``, ``batchnorm`` from the options of :func:`onnxplain.cli._add_model_options`."""
    return dict(output=args.output_name, strip_softmax=not args.no_strip_softmax,
                batchnorm="pass" if args.no_fold_bn and args.batchnorm == "fold" else args.batchnorm)


def check_unused(args, infos) -> None:
    """Options of :func:`onnxplain.cli._add_model_options` that the figures cannot honour: a clear error."""
    if getattr(args, "health", False):
        raise InputError("--health adds monitoring outputs to a compiled model: use `onnxplain compile --health`")
    for name in getattr(args, "inputs", None) or []:
        bad = [i.path for i in infos if i.input_name != name]
        if bad:
            raise InputError(f"--input {name}: the figures explain a model's only input; "
                             f"{', '.join(bad)} has input '{infos[0].input_name}'")


def parse_ints(text: Optional[str], what: str) -> Optional[list]:
    """``"1,2,5"`` -> ``[1, 2, 5]`` (None passes through)."""
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} must be integers separated by commas, got {text!r}") from None


def select(x: np.ndarray, names: list, index: Optional[list]) -> tuple:
    """Rows ``index`` of ``x`` and ``names`` (all when None), with a clear error when out of range."""
    if index is None:
        return x, names
    bad = [i for i in index if not 0 <= i < len(x)]
    if bad:
        raise InputError(f"index {bad} out of range: there are {len(x)} inputs (0..{len(x) - 1})")
    return x[index], [names[i] for i in index]
