"""PatternNet and PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural networks:
PatternNet and PatternAttribution", ICLR).

A linear neuron ``y = w^T x`` sees data ``x = s + d``: a *signal* ``s = a y`` and a *distractor*
``d`` that the filter ``w`` cancels (``w^T d = 0``).  The filter is not the signal: it also has to
suppress the distractor, so its direction (the gradient) mixes both.  The *pattern* ``a`` is the
signal direction, estimated from data.  With the covariance ``cov[x, y] = E[x y] - E[x] E[y]``:

* linear estimator (the paper's ``S_a``), over all samples::

      a = cov[x, y] / (w^T cov[x, y])            (w^T cov[x, y] = var[y]: then w^T a = 1)

* two-component estimator (the paper's ``S_{a+-}``) for a neuron followed by a ReLU: only its
  positive regime reaches the next layer, so the statistics run over the samples where the
  neuron is active, ``z = w^T x + b > 0`` (``E+`` below)::

      a+ = (E+[x y] - E+[x] E+[y]) / (w^T E+[x y] - w^T E+[x] E+[y])

  ``y = w^T x`` excludes the bias (a constant shift changes no covariance); the bias only decides
  which samples count.  A neuron that is never active (or whose ``y`` does not vary over its
  active samples) gets ``a = 0``.

Which layers get patterns: every linear layer on the explained path (Conv, Gemm, MatMul with a
constant weight), each with a pattern of its weight's shape, as in iNNvestigate 1.x, which gives
every layer with a kernel one (Dense and Conv2D).  For a Conv layer ``x`` is the receptive-field
patch at one output position (its group's input channels x kernel), ``y`` one output channel
there; the statistics run over every position of every sample.  For Gemm ``Y = alpha op(A) op(B)``
the filter is ``alpha`` times the column of ``op(B)``; the pattern is stored in ``B``'s layout.
Every layer, the last one included, uses the estimator chosen at fit time (iNNvestigate's default
``pattern_type="relu"`` does the same on a softmax-free model).

Backward passes (the explained logit's value is the seed, as in iNNvestigate, whose pattern
analyzers keep the output instead of replacing it by ones):

* ``pattern.net``: the gradient of the network with every linear layer's weight ``W`` replaced by
  its pattern ``A`` in the backward pass only.  ReLUs gate it with the forward mask, max pooling
  routes it to the forward maximum, every other op takes its exact gradient.  The result is a
  *signal* in input space (show it projected into the input range, not as a heat map).
* ``pattern.attribution``: the same with ``W (.) A`` (element-wise product).  The result is an
  attribution: per input the contribution ``(w (.) a)`` of the signal, i.e. Deep Taylor with the
  root point ``x - a w^T x``.

Not done here (and documented): iNNvestigate's per-layer rescaling of the backward signal to
[-1, 1] at bottleneck layers (``reverse_project_bottleneck_layers``) changes only a per-sample
scale, since every step of these backward passes is linear in the arriving signal.  iNNvestigate
1.x averages ``E[y]`` over all samples even in its ReLU estimator; we follow the paper
(``E+[y]``).  ConvTranspose and MatMul with the constant as the first operand get no pattern.

Patterns come from :func:`onnxplain.patterns.fit_patterns` (``onnxplain fit-patterns``); a
patterns file holds one array per node name and metadata with each weight's fingerprint, so a
file fitted on another model (or another BatchNorm treatment) is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from onnx import helper

from ..compiler.errors import CompileError, Problem
from .base import VJP, Ctx, Unsupported, node_attr
from .gradient import GRADIENT, Rule
from .methods import Method, Param

#: ops whose weight gets a pattern
PATTERN_OPS = ("Conv", "Gemm", "MatMul")
#: the npz entry holding the metadata (JSON)
META_KEY = "__onnxplain_patterns__"
FORMAT_VERSION = 1
ESTIMATORS = ("relu", "linear")


# --------------------------------------------------------------------------- layers


@dataclass
class PatternLayer:
    """A linear node seen as filters: ``y[:, c] = X @ filters()[:, c]`` for its data input ``x``.

    Attributes
    ----------
    name, op_type : str
        The node.
    x, z : str
        Its data input and its output (bias included).
    mask : str
        The tensor whose sign decides whether a neuron is active (set by the fit).
    weight : str
        The weight initializer's name; ``w`` its value.
    """

    name: str
    op_type: str
    x: str
    z: str
    weight: str
    w: np.ndarray
    alpha: float = 1.0
    trans_b: int = 0
    group: int = 1
    mask: str = ""  # the tensor whose sign gates the neuron (``z``, or ``z`` after a separate bias / BatchNorm)

    @property
    def channels(self) -> int:
        """Number of output neurons (output channels)."""
        if self.op_type == "Conv":
            return self.w.shape[0]
        return self.w.shape[0] if self.trans_b else self.w.shape[-1]

    def filters(self) -> np.ndarray:
        """The filter matrix ``[K, C]`` (float64): column ``c`` is output ``c``'s filter.

        Conv: ``K = C_in/group * prod(kernel)``, the patch of the output channel's group.
        """
        w = self.w.astype(np.float64)
        if self.op_type == "Conv":
            return w.reshape(w.shape[0], -1).T
        return self.alpha * (w.T if self.trans_b else w)

    def to_layout(self, a: np.ndarray) -> np.ndarray:
        """A pattern matrix ``[K, C]`` in the weight's layout (and dtype)."""
        if self.op_type == "Conv":
            out = a.T.reshape(self.w.shape)
        else:
            out = a.T if self.trans_b else a
        return np.ascontiguousarray(out).astype(self.w.dtype)


def fingerprint(w: np.ndarray) -> str:
    """A short digest of a weight array (dtype, shape and bytes)."""
    h = hashlib.sha256(f"{w.dtype.str}{tuple(w.shape)}".encode())
    h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()[:16]


def pattern_layer(g, node) -> tuple:
    """``(PatternLayer, None)`` for a supported linear node, ``(None, reason)`` otherwise."""
    op = node.op_type
    consts = [i for i, n in enumerate(node.input) if n and g.is_const(n)]
    if op == "ConvTranspose":
        return None, "PatternNet patterns for ConvTranspose are not implemented"
    if op == "MatMul" and consts != [1]:
        return None, "MatMul needs a constant second operand (x @ W) to get a pattern"
    if op in ("Conv", "Gemm") and (1 not in consts or g.is_const(node.input[0])):
        return None, f"{op} needs a run-time input and a constant weight to get a pattern"
    w = g.const(node.input[1])
    if op == "Gemm" and node_attr(node, "transA", 0):
        return None, "Gemm with transA=1 is not supported for patterns"
    if (op == "Conv" and w.ndim < 3) or (op != "Conv" and w.ndim != 2):
        return None, f"its weight has rank {w.ndim}; patterns need a 2-D matrix (Gemm/MatMul) or a conv kernel"
    if len(node.input) > 2 and node.input[2] and not g.is_const(node.input[2]):
        return None, "its bias is computed at run time"
    layer = PatternLayer(node.name, op, node.input[0], node.output[0], node.input[1], w,
                         alpha=float(node_attr(node, "alpha", 1.0)) if op == "Gemm" else 1.0,
                         trans_b=int(node_attr(node, "transB", 0)) if op == "Gemm" else 0,
                         group=int(node_attr(node, "group", 1)) if op == "Conv" else 1)
    return layer, None


# --------------------------------------------------------------------------- pattern sets


class PatternSet(Mapping):
    """Fitted patterns: node name -> array shaped like the node's weight, plus metadata.

    ``meta`` holds ``format``, ``estimator``, ``batchnorm``, ``samples`` and per node ``layers[name]``
    = ``{"op", "shape", "weight", "active"}`` (``weight``: the fingerprint of the weight the pattern
    was fitted for).  A plain dict of arrays (no metadata) is accepted too; then only names and
    shapes are checked.
    """

    def __init__(self, arrays: dict, meta: Optional[dict] = None, source: str = "patterns"):
        self.arrays = {str(k): np.asarray(v) for k, v in arrays.items()}
        self.meta = dict(meta or {})
        self.source = source

    def __getitem__(self, key):
        return self.arrays[key]

    def __iter__(self):
        return iter(self.arrays)

    def __len__(self):
        return len(self.arrays)

    def digest(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.arrays):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.arrays[k]).tobytes())
        return h.hexdigest()[:16]

    def __str__(self) -> str:  # recorded in the compiled model's metadata
        return f"{self.source} ({len(self)} patterns, sha256 {self.digest()})"

    def save(self, path) -> None:
        """Write an ``.npz`` atomically (complete or absent)."""
        save_patterns(self, path)


def save_patterns(patterns: PatternSet, path) -> None:
    """Write ``patterns`` to ``path`` (.npz) through a temporary file and a rename."""
    from ..compiler.export import atomic_write

    atomic_write(path, lambda fh: np.savez(fh, **{META_KEY: np.array(json.dumps(patterns.meta, sort_keys=True))},
                                           **patterns.arrays))


def load_patterns(value, where: str = "patterns") -> PatternSet:
    """A :class:`PatternSet` from a path to an ``.npz``, a dict ``node -> array`` or a PatternSet.

    Raises ``ValueError`` with what is wrong (missing file, not an npz, non-finite values).
    """
    if isinstance(value, PatternSet):
        return value
    if isinstance(value, Mapping):
        ps = PatternSet(dict(value), source="dict")
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise ValueError(f"no such patterns file: {path} (create it with `onnxplain fit-patterns`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            raise ValueError(f"{path} is not a readable .npz patterns file ({exc})") from None
        meta = {}
        if META_KEY in arrays:
            try:
                meta = json.loads(str(arrays.pop(META_KEY)))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: malformed metadata entry '{META_KEY}'") from None
        ps = PatternSet(arrays, meta, source=os.path.basename(path))
    else:
        raise ValueError(f"expected a path to an .npz file or a dict node name -> array, got {type(value).__name__}")
    bad = [k for k, a in ps.arrays.items() if a.dtype.kind != "f" or not np.all(np.isfinite(a))]
    if bad:
        raise ValueError(f"{ps.source}: non-float or non-finite patterns for {', '.join(bad)}")
    if not ps.arrays:
        raise ValueError(f"{ps.source} holds no patterns")
    return ps


def validate(patterns: PatternSet, g, linear: list, source: str) -> dict:
    """Match ``patterns`` to the linear nodes ``linear`` (names) of graph ``g``; list every problem.

    Returns ``node name -> PatternLayer``.  Problems: a node without a pattern, a pattern whose
    shape differs from the node's weight, a pattern fitted for other weights, a node that cannot
    get a pattern, names that are no linear node of the model.
    """
    nodes = {n.name: n for n in g.nodes}
    problems, layers = [], {}
    fit_layers = patterns.meta.get("layers", {})
    hint = "fit patterns for this model: onnxplain fit-patterns MODEL --data DATA -o patterns.npz"
    for name in linear:
        n = nodes[name]
        layer, why = pattern_layer(g, n)
        if layer is None:
            problems.append(Problem(source, name, n.op_type, why, "use another method for this model"))
            continue
        if name not in patterns:
            problems.append(Problem(source, name, n.op_type, f"{patterns.source} has no pattern for this node", hint))
            continue
        a = patterns[name]
        if tuple(a.shape) != tuple(layer.w.shape):
            problems.append(Problem(source, name, n.op_type, f"the pattern's shape {list(a.shape)} differs from the "
                                    f"weight's {list(layer.w.shape)} (patterns of another model?)", hint))
            continue
        fp = fit_layers.get(name, {}).get("weight")
        if fp is not None and fp != fingerprint(layer.w):
            bn = patterns.meta.get("batchnorm")
            problems.append(Problem(source, name, n.op_type, "the pattern was fitted for other weights (another "
                                    "model, or another BatchNorm treatment"
                                    + (f": it was fitted with batchnorm={bn}" if bn else "") + ")", hint))
            continue
        layers[name] = layer
    unknown = sorted(k for k in patterns if k not in nodes or nodes[k].op_type not in PATTERN_OPS + ("ConvTranspose",))
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        origin = patterns.meta.get("model")
        problems.append(Problem(source, None, None, f"{patterns.source} holds patterns for nodes that are not linear "
                                f"layers of this model: {shown} (patterns of another model?"
                                + (f" They were fitted for {origin})" if origin else ")"), hint))
    if problems:
        raise CompileError(problems)
    return layers


# --------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class PatternRule(Rule):
    """Backward of a linear layer with its pattern ``A`` (PatternNet) or ``W (.) A`` (PatternAttribution)."""

    name: str = "pattern.net"
    attribution: bool = False
    pattern: Optional[np.ndarray] = field(default=None, compare=False, hash=False, repr=False)

    def handles(self, op_type: str) -> bool:
        return op_type in PATTERN_OPS

    def backward(self, ctx: Ctx, node, gy: list) -> list:
        if node.op_type not in PATTERN_OPS or self.pattern is None:
            raise Unsupported(f"{self.name} applies to linear layers with a fitted pattern", "fit patterns")
        if [i for i, need in enumerate(ctx.needs) if need] != [0]:
            raise Unsupported("only the layer's first input may lie on the explained path", "use another method")
        b, w = ctx.b, node.input[1]
        dt = helper.tensor_dtype_to_np_dtype(ctx.g.dtype(w))
        alpha = float(node_attr(node, "alpha", 1.0)) if node.op_type == "Gemm" else 1.0
        a = _pattern_initializer(ctx, node.name, np.asarray(self.pattern, np.float64).astype(dt))
        if self.attribution:
            scaled = w if alpha == 1.0 else b.op("Mul", w, b.scalar_like(alpha, w))
            a = b.op("Mul", scaled, a)  # W (.) A: folded by ONNX Runtime at session creation
            ctx.g.alias(a, w)
        copy = helper.make_node(node.op_type, [node.input[0], a], [node.output[0]], name=node.name)
        copy.attribute.extend(x for x in node.attribute if x.name not in ("alpha", "beta"))
        sub = Ctx(ctx.b, ctx.g, [True, False])
        dx = VJP[node.op_type](sub, copy, [gy[0]])[0]
        return [dx] + [None] * (len(node.input) - 1)


def _pattern_initializer(ctx: Ctx, node: str, value: np.ndarray) -> str:
    """The pattern baked in as an initializer, shared by every method of one compilation."""
    cache = ctx.g.__dict__.setdefault("_onnxplain_patterns", {})
    key = (node, value.dtype.str, value.shape, hashlib.sha256(value.tobytes()).hexdigest())
    if key not in cache:
        cache[key] = ctx.g.add_initializer(value, f"{node}/pattern")
    return cache[key]


def _make_assign(attribution: bool):
    name = "pattern.attribution" if attribution else "pattern.net"

    def make(actx, p):
        src = actx.g.source
        if p.get("patterns") is None:
            near = os.path.splitext(src)[0] + "_patterns.npz"
            fix = (f"patterns fitted for this model lie beside it: pass --patterns {near} (Python: patterns=...)"
                   if src.endswith(".onnx") and os.path.isfile(near) else
                   "run `onnxplain fit-patterns MODEL --data DATA -o patterns.npz`, then pass --patterns "
                   "patterns.npz (Python: patterns=...)")
            raise CompileError([Problem(src, None, None, f"method '{name}' needs fitted patterns", fix)])
        layers = validate(p["patterns"], actx.g, actx.linear, src)
        rules = {n: PatternRule(name, attribution, np.asarray(p["patterns"][n])) for n in layers}

        def assign(node) -> Rule:
            return rules.get(node.name, GRADIENT)
        return assign
    return make


@dataclass(frozen=True)
class PatternsParam(Param):
    """The ``patterns`` parameter: a path to an ``.npz`` from ``fit-patterns`` or a dict node -> array."""

    def parse(self, value):
        return None if value is None else load_patterns(value)


_PATTERNS = PatternsParam("patterns", None, "fitted patterns: a .npz file from `onnxplain fit-patterns` (CLI: "
                          "--patterns FILE) or a dict node name -> array shaped like the node's weight", "patterns")


def pattern_methods() -> list:
    """The two pattern-based methods of the registry."""
    ref = "Kindermans et al. 2018"
    return [
        Method("pattern.net", "PatternNet: the signal direction, backprop with each linear layer's weight replaced "
               "by its fitted pattern (show projected into the input range)", "backward", params=(_PATTERNS,),
               make_assign=_make_assign(False), seed="logit", reference=ref, extra={"show_as": "signal"}),
        Method("pattern.attribution", "PatternAttribution: backprop with weights W * A (element-wise, A the "
               "fitted pattern), an attribution", "backward", params=(_PATTERNS,),
               make_assign=_make_assign(True), seed="logit", reference=ref),
    ]
