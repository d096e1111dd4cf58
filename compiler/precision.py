"""Float16 compilation: run a compiled model's heavy arithmetic in float16, keep its interface float32.

:func:`to_float16` rewrites a compiled (float32) model so that

* the model's inputs and outputs keep their float32 types: the inputs are cast to float16 where
  float16 nodes read them, the outputs are cast back to float32 (callers change nothing);
* float initializers become float16 (the file and the GPU memory for weights halve) unless a
  float32 node reads them, in which case they stay float32 (and float16 readers get a ``Cast`` that
  ONNX Runtime folds at session creation);
* the compute-heavy ops (:data:`FLOAT16_OPS`: convolutions, matrix products, pooling, scatter,
  normalisation) and the elementwise ops fed by them run in float16;
* numerically fragile parts stay float32 (:data:`FLOAT32_OPS`):

  - every ``Div``/``Reciprocal`` and the elementwise chain that computes its denominator: the LRP
    stabiliser ``z + eps sign(z)`` with Zennit's ``eps = 1e-6`` would fall into float16's subnormal
    range (smallest normal 6.1e-5) and relevance / ``z`` can overflow float16 (max 65504) where
    ``z`` is small;
  - ``Softmax``/``LogSoftmax``, ``Exp``, ``Log``, ``Pow``, ``Sqrt``, trigonometric functions and
    the reductions (``ReduceSum``/``ReduceMean``/...): the softmax head, the Box-Muller noise of
    SmoothGrad and the sums over the points of integrated gradients / SmoothGrad;
  - nodes whose floating inputs are all float32 already (the float32 input and cheap pre-processing
    such as IG's ``x' + a (x - x')``, SmoothGrad's noise generator from its integer hash, the sums
    carried across ``Loop`` iterations);
  - ``ScatterElements``/``ScatterND`` (the max-pool backward sums with ``reduction="add"``, which
    ONNX Runtime's CPU provider has no float16 kernel for);
  - constants that float16 cannot hold, and the nodes reading them: a finite value beyond float16's
    range (65504; it would become ``inf``, and ``inf * 0 = NaN``), or a small constant (at most
    :data:`SMALL_CONSTANT` values: stabilisers, slopes, thresholds) with a nonzero value below float16's
    smallest normal 2^-14 (it would lose its relative precision or vanish); likewise nodes with a float
    attribute beyond float16's range (e.g. a ``HardSigmoid``/``LeakyRelu`` slope: CUDA's float16 kernels
    compute ``(half) alpha * x``). Weight tensors keep float16 whatever their small values (ordinary
    float16 rounding);
  - ``Loop``/``If``/``Scan`` interfaces (carried values, e.g. the IG/SmoothGrad accumulators, are
    float32; the body's heavy ops are converted like the main graph's).

Where float16 and float32 parts meet, a ``Cast`` is inserted (one per tensor and direction). The
result is a standard ONNX model (default domain, IR version set explicitly, full ``onnx.checker``).

Float16 error: a float16 mantissa has 11 bits (relative rounding 4.9e-4); GPU kernels accumulate
convolutions in float32, so maps typically differ from float32 by ~1e-3 relative (measured per model
by ``bench/gpu``). The explained class is chosen from float16 logits: pass ``target`` when comparing
float16 with float32 maps, or two nearly tied classes may be swapped. Maps whose values are tiny
(below ~1e-5, e.g. per-pixel LRP relevance on large inputs) lose relative precision in float16's
subnormal range.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import CompileError, Problem

F32, F16 = "32", "16"

#: Ops that always run in float16 (the arithmetic that dominates run time).
FLOAT16_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "LpPool", "MaxUnpool", "GatherElements",
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "LRN", "Resize"})

#: Ops that always run in float32 (inputs cast up, outputs stay float32).
FLOAT32_OPS = frozenset({
    "Div", "Reciprocal", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Sqrt", "Cos", "Sin", "Tan", "Erf",
    "Softplus", "CumSum", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceProd",
    "ScatterElements", "ScatterND"})  # max-pool backward: sums with reduction="add" (no float16 CPU kernel)

#: Elementwise ops followed backward from a denominator (they are kept float32 with the ``Div``).
_DENOMINATOR_CHAIN = frozenset({"Add", "Sub", "Mul", "Where", "Abs", "Neg", "Sign", "Max", "Min", "Clip",
                                "Identity", "Relu", "Expand", "Reshape"})
#: Constants with at most this many values must keep every nonzero value in float16's normal range.
SMALL_CONSTANT = 16
_F16_TINY = 2.0 ** -14  # smallest normal float16
#: Ops that read only their input's shape: no cast for them.
_SHAPE_ONLY = frozenset({"Shape", "Size"})


class _Scope:
    """One graph (the main graph or a subgraph): float tensors, constants, native precisions."""

    def __init__(self, graph, types: dict, parent: Optional["_Scope"] = None):
        self.graph, self.types, self.parent = graph, types, parent
        self.native = {}      # float32 tensor name -> F16/F32 (precision it is produced in)
        self.consts = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
        self.consts |= {n.output[0] for n in graph.node if n.op_type == "Constant"
                        and types.get(n.output[0]) == TensorProto.FLOAT}
        self.unsafe = _unsafe_constants(graph, self.consts)  # constants float16 cannot hold
        self.modes = {}       # node index -> F16/F32
        self.demand = {}      # constant name -> set of precisions its readers need
        self.casts = {}       # (tensor, precision) -> name of the cast tensor
        self.pending = []     # Cast nodes to insert before the node being rewritten
        self.alias = {}       # graph output name -> its float16 producer's renamed output
        self.children = {}    # id(subgraph) -> its _Scope

    def owner(self, name: str) -> Optional["_Scope"]:
        s = self
        while s is not None:
            if name in s.native or name in s.consts:
                return s
            s = s.parent
        return None

    def is_float(self, name: str) -> bool:
        return bool(name) and self.types.get(name) == TensorProto.FLOAT

    def precision(self, name: str) -> Optional[str]:
        s = self.owner(name)
        if s is None:
            return None
        return s.native.get(name, "const")


def to_float16(model: onnx.ModelProto, keep_float32: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of ``model`` computing in float16, with float32 inputs and outputs.

    Parameters
    ----------
    model : onnx.ModelProto
        A float32 model (typically the output of :func:`onnxplain.compile`).
    keep_float32 : iterable of str
        More op types to keep in float32.

    Returns
    -------
    onnx.ModelProto
        The converted model (metadata ``onnxplain.precision = "float16"``).

    Raises
    ------
    CompileError
        When the model has no float32 tensors to convert, or the result fails ``onnx.checker``.
    """
    from .export import add_metadata, check, set_versions
    from .graph import strip_weights

    light = strip_weights(model)[0]
    inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False)
    types = _collect_types(inferred.graph)
    if TensorProto.FLOAT not in types.values():
        raise CompileError([Problem("model", None, None, "the model has no float32 tensors to convert to float16",
                                    "float16 compilation applies to float32 models")])
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fp32_ops = FLOAT32_OPS | frozenset(keep_float32)
    root = _Scope(out.graph, types)
    for i in out.graph.input:
        if root.is_float(i.name) and i.name not in root.consts:
            root.native[i.name] = F32
    _analyse(root, fp32_ops)
    _decide_constants(root)
    _rewrite(root, main=True)
    add_metadata(out, {"precision": "float16"})
    set_versions(out)
    check(out, "float16 model")
    return out


def _collect_types(graph, types: Optional[dict] = None) -> dict:
    """Element type of every typed tensor in ``graph`` and its subgraphs."""
    types = {} if types is None else types
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        if v.type.HasField("tensor_type"):
            types[v.name] = v.type.tensor_type.elem_type
    for t in graph.initializer:
        types[t.name] = t.data_type
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            types[n.output[0]] = n.attribute[0].t.data_type
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _collect_types(sub, types)
    return types


def _subgraphs(node) -> list:
    return [sub for a in node.attribute for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _denominator_nodes(scope: _Scope, fp32_ops) -> set:
    """Indices of the elementwise nodes that compute the denominator of a float32 ``Div``."""
    producer = {o: i for i, n in enumerate(scope.graph.node) for o in n.output if o}
    marked, todo = set(), []
    for n in scope.graph.node:
        if n.op_type == "Div" and "Div" in fp32_ops and len(n.input) > 1:
            todo.append(n.input[1])
    while todo:
        name = todo.pop()
        i = producer.get(name)
        if i is None or i in marked or scope.graph.node[i].op_type not in _DENOMINATOR_CHAIN:
            continue
        marked.add(i)
        todo.extend(x for x in scope.graph.node[i].input if scope.is_float(x))
    return marked


def _analyse(scope: _Scope, fp32_ops) -> None:
    """Choose every node's precision (recursively) and record what each constant's readers need."""
    chain = _denominator_nodes(scope, fp32_ops)
    for idx, n in enumerate(scope.graph.node):
        fins = [x for x in n.input if scope.is_float(x)]
        mode = _mode(scope, idx, n, fins, chain, fp32_ops)
        scope.modes[idx] = mode
        if n.op_type not in _SHAPE_ONLY:
            for x in fins:
                owner = scope.owner(x)
                if owner is not None and x in owner.consts:
                    owner.demand.setdefault(x, set()).add(mode)
        for o in n.output:
            if scope.is_float(o) and n.op_type != "Constant":
                scope.native[o] = mode
        for sub in _subgraphs(n):
            inner = _Scope(sub, scope.types, scope)
            for i in sub.input:
                if inner.is_float(i.name):
                    inner.native[i.name] = F32
            _analyse(inner, fp32_ops)
            _decide_constants(inner)
            scope.children[id(sub)] = inner


def _fits_float16(values, small: bool) -> bool:
    """Whether float16 holds ``values``: no finite value overflows; if ``small``, no nonzero value is subnormal."""
    a = np.asarray(values, np.float64).ravel()
    a = a[np.isfinite(a)]
    with np.errstate(over="ignore"):
        over = not np.isfinite(a.astype(np.float16)).all()  # beyond 65504 (and its rounding half-ulp)
    if over:
        return False
    return not (small and ((a != 0) & (np.abs(a) < _F16_TINY)).any())


def _unsafe_constants(graph, consts: set) -> set:
    """Float32 constants of ``graph`` (initializers, ``Constant`` nodes) whose values float16 cannot hold."""
    bad = set()
    for t in graph.initializer:
        if t.name in consts:
            arr = numpy_helper.to_array(t)
            bad |= set() if _fits_float16(arr, arr.size <= SMALL_CONSTANT) else {t.name}
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] in consts and n.attribute:
            val = helper.get_attribute_value(n.attribute[0])
            arr = numpy_helper.to_array(val) if isinstance(val, TensorProto) else np.asarray(val, np.float64)
            bad |= set() if _fits_float16(arr, arr.size <= SMALL_CONSTANT) else {n.output[0]}
    return bad


def _needs_float32(scope: _Scope, n, fins: list) -> bool:
    """A node reading a constant float16 cannot hold, or with a float attribute beyond float16's range."""
    for x in fins:
        owner = scope.owner(x)
        if owner is not None and x in owner.unsafe:
            return True
    floats = [v for a in n.attribute if a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS)
              for v in ([a.f] if a.type == onnx.AttributeProto.FLOAT else list(a.floats))]
    return n.op_type != "Constant" and not _fits_float16(floats, False)


def _mode(scope: _Scope, idx: int, n, fins: list, chain: set, fp32_ops) -> str:
    if _subgraphs(n) or n.op_type in fp32_ops or idx in chain or _needs_float32(scope, n, fins):
        return F32
    if n.op_type in FLOAT16_OPS:
        return F16
    if not fins:
        return F32  # produced from integers (Cast of the noise hash, ConstantOfShape, ...): exact as it is
    live = [x for x in fins if scope.precision(x) != "const"]
    if live and all(scope.precision(x) == F32 for x in live):
        return F32
    return F16


def _decide_constants(scope: _Scope) -> None:
    for name in scope.consts:
        scope.native[name] = F16 if scope.demand.get(name) == {F16} else F32
    for t in scope.graph.initializer:
        if t.name in scope.consts and scope.native[t.name] == F16:
            t.CopyFrom(_half(t))
    for n in scope.graph.node:
        if n.op_type == "Constant" and n.output[0] in scope.consts and scope.native[n.output[0]] == F16:
            n.attribute[0].t.CopyFrom(_half(n.attribute[0].t))
    for i in scope.graph.input:  # initializers also listed as (overridable) inputs
        if scope.native.get(i.name) == F16 and i.name in scope.consts:
            i.type.tensor_type.elem_type = TensorProto.FLOAT16


def _half(t: TensorProto) -> TensorProto:
    arr = numpy_helper.to_array(t)
    return numpy_helper.from_array(arr.astype(np.float16), t.name)


def _cast(scope: _Scope, name: str, want: str) -> str:
    """``name`` in precision ``want``: a (cached) Cast in the scope that owns ``name``."""
    owner = scope.owner(name) or scope
    key = (name, want)
    if key not in owner.casts:
        out = f"{name}/as_float{want}"
        owner.casts[key] = out
        to = TensorProto.FLOAT16 if want == F16 else TensorProto.FLOAT
        owner.pending.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}/Cast"))
        owner.native[out] = want
    return owner.casts[key]


def _rewrite(scope: _Scope, main: bool) -> None:
    """Insert the casts, retarget ``Cast(to=FLOAT)`` and fix types; recursively for subgraphs."""
    g = scope.graph
    outputs = {o.name for o in g.output}
    old = list(g.node)
    new = []
    for idx, n in enumerate(old):
        mode = scope.modes[idx]
        for k, x in enumerate(n.input):
            if not scope.is_float(x):
                continue
            x = _resolve(scope, x)
            have = scope.precision(x)
            cast = n.op_type not in _SHAPE_ONLY and have in (F16, F32) and have != mode
            n.input[k] = _cast(scope, x, mode) if cast else x
        if n.op_type == "Cast" and mode == F16 and _attr(n, "to") == TensorProto.FLOAT:
            _set_attr(n, "to", TensorProto.FLOAT16)
        back = []
        for k, o in enumerate(n.output):
            if o in outputs and scope.native.get(o) == F16:  # a model output: float16 inside, float32 out
                renamed = f"{o}/float16"
                n.output[k] = renamed
                scope.alias[o] = renamed
                scope.native[renamed] = F16
                back.append(helper.make_node("Cast", [renamed], [o], to=TensorProto.FLOAT, name=f"{o}/as_float32/Cast"))
        for sub in _subgraphs(n):
            inner = scope.children[id(sub)]
            _rewrite(inner, main=False)
        _flush(scope, new)  # casts for this node, also those its subgraphs asked of this scope
        new.append(n)
        new.extend(back)
    for o in g.output:
        if o.name not in scope.alias and scope.native.get(o.name) == F16:  # a float16 constant passed straight out
            cast = _cast(scope, o.name, F32)
            _flush(scope, new)
            o.name = cast
    _flush(scope, new)
    del g.node[:]
    g.node.extend(new)
    _retype(scope)


def _flush(scope: _Scope, into: list) -> None:
    """Emit the pending casts of ``scope`` into its node list being built (before the current node)."""
    into.extend(scope.pending)
    scope.pending = []


def _resolve(scope: _Scope, name: str) -> str:
    s = scope
    while s is not None:
        if name in s.alias:
            return s.alias[name]
        s = s.parent
    return name


def _retype(scope: _Scope) -> None:
    g = scope.graph
    half = {k for k, v in scope.native.items() if v == F16}
    keep = [v for v in g.value_info if v.name not in half]
    for v in g.value_info:
        if v.name in half and v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
            keep.append(v)
    del g.value_info[:]
    g.value_info.extend(keep)


def _attr(n, name: str):
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_attr(n, name: str, value) -> None:
    for a in n.attribute:
        if a.name == name:
            n.attribute.remove(a)
            break
    n.attribute.extend([helper.make_attribute(name, value)])
