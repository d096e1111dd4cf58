"""The graph facade: the only module that reads and writes ONNX protobuf.

Everything else (canonicalization passes, rules, the reverse emitter) talks to
:class:`Graph` and :class:`Builder`.  A :class:`Graph` is a mutable, flat view of
an ONNX ``GraphProto``: a list of nodes, a dict of initializers, shape/dtype
information from ONNX shape inference, and producer/consumer indices keyed by
tensor name (never by node object, see the architecture notes).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto

from .errors import CompileError, Problem

#: ONNX element types we treat as differentiable floats.
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}


def load_model(model, what: str = "model") -> onnx.ModelProto:
    """Load an ONNX model from a path, bytes or a ``ModelProto`` (with external data).

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model. Paths may refer to models whose weights live in external data
        files next to them.
    what : str
        How to name the model in error messages.

    Raises
    ------
    CompileError
        When the file is missing, is not ONNX, is truncated, or refers to a missing
        external-data file.
    """
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises many kinds
            raise CompileError([Problem(what, None, None, f"cannot parse ONNX bytes ({exc})",
                                        "pass a serialized onnx.ModelProto")]) from None
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise CompileError([Problem(path, None, None, "file not found", "check the path")])
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001
        raise CompileError([Problem(path, None, None, f"not a readable ONNX model ({type(exc).__name__}: {exc})",
                                    "pass an .onnx file written by an ONNX exporter; the file may be truncated")]) from None
    if not proto.graph.node and not proto.graph.output:
        raise CompileError([Problem(path, None, None, "not an ONNX model (empty graph)",
                                    "pass an .onnx file written by an ONNX exporter")])
    _load_external(proto, path)
    return proto


def _load_external(proto: onnx.ModelProto, path: str) -> None:
    """Resolve external-data tensors relative to ``path``, reporting every missing file."""
    base = os.path.dirname(os.path.abspath(path))
    missing = []
    for t in _all_tensors(proto):
        if t.data_location == TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if not os.path.isfile(os.path.join(base, loc)):
                missing.append(Problem(path, None, None,
                                       f"external data file '{loc}' of tensor '{t.name}' is missing",
                                       f"put '{loc}' next to the model"))
    if missing:
        raise CompileError(missing)
    try:
        onnx.external_data_helper.load_external_data_for_model(proto, base)
    except Exception as exc:  # noqa: BLE001
        raise CompileError([Problem(path, None, None, f"cannot read external data ({exc})",
                                    "check that the external-data files are complete")]) from None


def _all_tensors(proto: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(proto)


#: initializers larger than this (elements) are replaced by graph inputs in "light" copies
LIGHT_LIMIT = 4096


def strip_weights(model: onnx.ModelProto, limit: int = LIGHT_LIMIT) -> tuple:
    """A light copy of ``model`` whose large initializers are graph inputs of the same type and shape.

    ONNX shape inference, the version converter and the checker only need the weights' shapes;
    serialising hundreds of megabytes of weights for each of them dominated compile time.
    Returns ``(light model, {name: TensorProto})``; :meth:`Graph.from_model` takes both back.
    """
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.producer_name, light.producer_version = model.producer_name, model.producer_version
    light.domain, light.model_version, light.doc_string = model.domain, model.model_version, model.doc_string
    light.metadata_props.extend(model.metadata_props)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.name = model.graph.name
    light.graph.node.extend(model.graph.node)
    light.graph.output.extend(model.graph.output)
    light.graph.value_info.extend(model.graph.value_info)
    stash = {}
    inputs = list(model.graph.input)
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in inputs if i.name not in init_names]
    for t in model.graph.initializer:
        if int(np.prod(t.dims)) > limit:
            stash[t.name] = t
            inputs.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            light.graph.initializer.append(t)
    light.graph.input.extend(inputs)
    return light, stash


def _without_inputs(model: onnx.ModelProto, names: set) -> onnx.ModelProto:
    """A shallow-ish copy of a (light) model whose graph inputs ``names`` are dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [i for i in out.graph.input if i.name not in names]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    return out


@dataclass
class TensorInfo:
    """Static information on one tensor: element type and shape (ints, strings or None)."""

    dtype: int
    shape: Optional[list]

    @property
    def rank(self) -> Optional[int]:
        return None if self.shape is None else len(self.shape)


def _info_from_vi(vi: onnx.ValueInfoProto) -> TensorInfo:
    tt = vi.type.tensor_type
    shape = None
    if tt.HasField("shape"):
        shape = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
    return TensorInfo(tt.elem_type, shape)


@dataclass
class Graph:
    """A mutable flat view of an ONNX model's main graph.

    Attributes
    ----------
    nodes : list of onnx.NodeProto
        The nodes, in topological order.
    inits : dict
        Initializer name -> ``TensorProto``.
    info : dict
        Tensor name -> :class:`TensorInfo` (graph inputs/outputs, initializers and
        what shape inference found).
    opset : int
        The default-domain opset version.
    """

    model: onnx.ModelProto
    nodes: list
    inits: dict
    info: dict
    opset: int
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    source: str = "model"
    _names: set = field(default_factory=set)
    _const_cache: dict = field(default_factory=dict)
    _alias: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ build
    @classmethod
    def from_model(cls, model: onnx.ModelProto, source: str = "model", stash: Optional[dict] = None) -> "Graph":
        """Wrap ``model`` (its graph is copied; ``model`` itself is not changed).

        ``stash`` holds initializers taken out by :func:`strip_weights`; they become initializers
        again (and stop being graph inputs).
        """
        if stash:
            model = _without_inputs(model, set(stash))
        g = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        info = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            info[vi.name] = _info_from_vi(vi)
        inits = {t.name: t for t in g.initializer}
        inits.update(stash or {})
        for t in inits.values():
            info[t.name] = TensorInfo(t.data_type, list(t.dims))
        init_names = set(inits)
        inputs = [vi for vi in g.input if vi.name not in init_names]
        graph = cls(model=model, nodes=[_copy(n) for n in g.node], inits=dict(inits), info=info,
                    opset=opset, inputs=list(inputs), outputs=list(g.output), source=source)
        graph._names = {n.name for n in g.node} | set(info) | init_names
        for n in g.node:
            graph._names.update(n.output)
        return graph

    def fresh(self, base: str) -> str:
        """Return a tensor or node name starting with ``base`` not used anywhere yet."""
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def reserve(self, names: Iterable[str]) -> None:
        """Mark names as used."""
        self._names.update(names)

    # ------------------------------------------------------------- queries
    def resolve(self, name: str) -> str:
        """Follow aliases (cloned tensors share the static information of their original)."""
        while name in self._alias:
            name = self._alias[name]
        return name

    def alias(self, new: str, old: str) -> None:
        """Declare that tensor ``new`` has the same static information as ``old``."""
        if new != old:
            self._alias[new] = old

    def tinfo(self, name: str) -> Optional[TensorInfo]:
        return self.info.get(self.resolve(name))

    def shape(self, name: str) -> Optional[list]:
        """The static shape of ``name`` (dims are ints, symbolic strings or None) or None."""
        ti = self.tinfo(name)
        return None if ti is None else ti.shape

    def rank(self, name: str) -> Optional[int]:
        s = self.shape(name)
        return None if s is None else len(s)

    def dtype(self, name: str) -> Optional[int]:
        """The element type of ``name``; where shape inference gave none, derived from the producer."""
        ti = self.tinfo(name)
        if ti is not None and ti.dtype:
            return ti.dtype
        return self._derived_dtype(self.resolve(name), 0)

    def _derived_dtype(self, name: str, depth: int) -> Optional[int]:
        prod = self.producers().get(name)
        if prod is None or depth > 50:
            return None
        op = prod.op_type
        if op == "Cast":
            return attr(prod, "to")
        if op in _INT64_OPS or (op in ("TopK", "MaxPool") and list(prod.output).index(name) == 1):
            return TensorProto.INT64
        if op in _BOOL_OPS:
            return TensorProto.BOOL
        if op == "ConstantOfShape":
            value = attr(prod, "value")
            return value.data_type if value is not None else TensorProto.FLOAT
        if op == "OneHot":
            return self.dtype(prod.input[2])
        if op == "Constant":
            v = self.const(name)
            return None if v is None else helper.np_dtype_to_tensor_dtype(v.dtype)
        for i in prod.input[1:] if op == "Where" else prod.input:
            ti = self.info.get(i)
            dt = ti.dtype if ti is not None and ti.dtype else self._derived_dtype(i, depth + 1) if i else None
            if dt:
                info = TensorInfo(dt, None)
                self.info.setdefault(name, info)
                return dt
        return None

    def is_float(self, name: str) -> bool:
        return self.dtype(name) in FLOAT_TYPES

    def const(self, name: str) -> Optional[np.ndarray]:
        """The value of ``name`` if it is an initializer or a Constant node's output."""
        if not name:
            return None
        name = self.resolve(name)
        if name in self._const_cache:
            return self._const_cache[name]
        val = None
        if name in self.inits:
            val = numpy_helper.to_array(self.inits[name])
        else:
            prod = self.producers().get(name)
            if prod is not None and prod.op_type == "Constant":
                val = _constant_value(prod)
        if val is not None:
            self._const_cache[name] = val
        return val

    def is_const(self, name: str) -> bool:
        return self.const(name) is not None

    def producers(self) -> dict:
        """Tensor name -> producing node (recomputed on each call; cheap for our sizes)."""
        return {o: n for n in self.nodes for o in n.output if o}

    def consumers(self) -> dict:
        """Tensor name -> list of consuming nodes (in node order), graph outputs excluded."""
        out: dict = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def input_names(self) -> list:
        return [vi.name for vi in self.inputs]

    def output_names(self) -> list:
        return [vi.name for vi in self.outputs]

    # ------------------------------------------------------------- mutation
    def add_initializer(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        t = numpy_helper.from_array(np.asarray(array), name)
        self.inits[name] = t
        self.info[name] = TensorInfo(t.data_type, list(t.dims))
        return name

    def set_info(self, name: str, dtype: int, shape: Optional[Sequence]) -> None:
        self.info[name] = TensorInfo(dtype, None if shape is None else list(shape))

    def remove_unused(self) -> None:
        """Drop nodes whose outputs nobody uses and initializers nobody reads."""
        needed = set(self.output_names())
        keep = []
        for n in reversed(self.nodes):
            if any(o in needed for o in n.output) or _has_side_effect(n):
                keep.append(n)
                needed.update(i for i in n.input if i)
                needed.update(_subgraph_inputs(n))
        self.nodes = list(reversed(keep))
        self.inits = {k: v for k, v in self.inits.items() if k in needed}

    def light_model(self, limit: int = LIGHT_LIMIT) -> onnx.ModelProto:
        """:meth:`to_model` without copying large initializers (they become typed graph inputs)."""
        big = {k for k, t in self.inits.items() if int(np.prod(t.dims)) > limit}
        saved = self.inits
        self.inits = {k: t for k, t in saved.items() if k not in big}
        try:
            extra = [helper.make_tensor_value_info(k, saved[k].data_type, list(saved[k].dims)) for k in big]
            return self.to_model(extra_inputs=extra)
        finally:
            self.inits = saved

    def to_model(self, extra_inputs=(), extra_outputs=(), extra_inits=()) -> onnx.ModelProto:
        """Assemble a new ``ModelProto`` (inputs/outputs/metadata of the original kept)."""
        m = onnx.ModelProto()
        m.ir_version = self.model.ir_version
        m.producer_name = self.model.producer_name
        m.producer_version = self.model.producer_version
        m.domain = self.model.domain
        m.model_version = self.model.model_version
        m.doc_string = self.model.doc_string
        m.opset_import.extend(self.model.opset_import)
        m.metadata_props.extend(self.model.metadata_props)
        m.functions.extend(self.model.functions)
        g = m.graph
        g.name = self.model.graph.name or "graph"
        g.node.extend(self.nodes)
        g.input.extend(list(self.inputs) + list(extra_inputs))
        g.output.extend(list(self.outputs) + list(extra_outputs))
        g.initializer.extend(list(self.inits.values()) + list(extra_inits))
        return m


_INT64_OPS = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"}
_BOOL_OPS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN",
             "IsInf"}


def all_nodes(graph: onnx.GraphProto):
    """Every node of ``graph`` and of its subgraphs (If/Loop/Scan bodies), depth first."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    yield from all_nodes(sg)


def all_names(graph: onnx.GraphProto) -> set:
    """Every tensor and node name used in ``graph`` and its subgraphs (for :func:`fresh_name`)."""
    names = {t.name for t in graph.initializer} | {v.name for v in list(graph.input) + list(graph.output)}
    for n in graph.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
        for a in n.attribute:
            for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names |= all_names(sg)
    return names


def fresh_name(base: str, taken: set) -> str:
    """``base`` (or ``base_2``, ``base_3``, ...) not in ``taken``; added to it (as :meth:`Graph.fresh`)."""
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    n = onnx.NodeProto()
    n.CopyFrom(node)
    return n


def _has_side_effect(node) -> bool:
    return False


def _subgraph_inputs(node) -> set:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the outer scope."""
    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in graphs:
            local = {i.name for i in sg.input} | {t.name for t in sg.initializer}
            for sn in sg.node:
                local.update(sn.output)
            for sn in sg.node:
                names.update(i for i in sn.input if i and i not in local)
                names.update(_subgraph_inputs(sn))
            names.update(o.name for o in sg.output if o.name not in local)
    return names


def _constant_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
    return None


def attr(node: onnx.NodeProto, name: str, default=None):
    """Read attribute ``name`` of ``node`` as a Python value, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "?")


class Builder:
    """Appends new nodes to a node list, naming them ``<prefix>/<op>``.

    Parameters
    ----------
    graph : Graph
        Supplies unique names, constants and static tensor information.
    nodes : list
        Where emitted nodes go (the main graph's list or a Loop body's).
    prefix : str
        Provenance prefix, e.g. ``"conv1/gradient"``.
    """

    def __init__(self, graph: Graph, nodes: list, prefix: str = "onnxplain"):
        self.g = graph
        self.nodes = nodes
        self.prefix = prefix
        # small constants are shared by every builder of the graph (one initializer per value)
        if not hasattr(graph, "_small_consts"):
            graph._small_consts = {}
        self._consts: dict = graph._small_consts

    def scoped(self, prefix: str) -> "Builder":
        b = Builder(self.g, self.nodes, prefix)
        b._consts = self._consts
        return b

    def op(self, op_type: str, *inputs, n_out: int = 1, **attrs):
        """Emit one node; return its output name (or a list when ``n_out`` > 1)."""
        outs = [self.g.fresh(f"{self.prefix}/{op_type}") for _ in range(n_out)]
        name = self.g.fresh(f"{self.prefix}/{op_type}")
        ins = ["" if i is None else i for i in inputs]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, ins, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None) -> str:
        """An initializer holding ``value`` (small constants are shared)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 64 else None
        if key is not None and key in self._consts and self._consts[key] in self.g.inits:
            return self._consts[key]
        name = self.g.add_initializer(arr, f"{self.prefix}/const")
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64))

    def scalar_like(self, value: float, like: str) -> str:
        """A scalar constant with the element type of tensor ``like``."""
        dt = self.g.dtype(like)
        np_dt = helper.tensor_dtype_to_np_dtype(dt) if dt else np.float32
        return self.const(np.array(value, dtype=np_dt))

    # Convenience wrappers for ops whose signature depends on the opset (all >= 18 here).
    def reduce(self, op_type: str, x: str, axes, keepdims: int = 1) -> str:
        return self.op(op_type, x, self.ints(list(axes)), keepdims=keepdims)

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.ints(list(axes)))

    def squeeze(self, x: str, axes) -> str:
        return self.op("Squeeze", x, self.ints(list(axes)))

    def shape_of(self, x: str) -> str:
        return self.op("Shape", x)

    def reshape_like(self, x: str, like: str) -> str:
        return self.op("Reshape", x, self.shape_of(like))

    def zeros_like(self, x: str) -> str:
        dt = self.g.dtype(x) or TensorProto.FLOAT
        val = helper.make_tensor("value", dt, [1], [0])
        return self.op("ConstantOfShape", self.shape_of(x), value=val)
