"""Symbolic evaluation of shape computations, and the pass that makes Reshape targets constant.

Exporters often compute a Reshape's target shape at run time from ``Shape(x)``
(``x.view(x.size(0), g, -1, h, w)``), which hides static sizes from ONNX shape
inference.  :func:`fold_reshape_shapes` evaluates such integer sub-graphs
symbolically: each element is an int, a symbolic dimension name (``"N"``) or unknown.
When a Reshape's target is then known up to dimensions it copies from its input at
the same position (written ``0``) and at most one inferred dimension (``-1``), the
target is replaced by a constant.  The Reshape computes the same result for every
batch size, and the sizes downstream become static.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .graph import Graph, attr

UNKNOWN = None


class SymVec:
    """A 0-D or 1-D integer tensor whose elements are ints, dimension names or unknown."""

    def __init__(self, items, scalar: bool = False):
        self.items = list(items)
        self.scalar = scalar


def _from_const(v: np.ndarray) -> Optional[SymVec]:
    if v.dtype.kind not in "iu" or v.ndim > 1:
        return None
    return SymVec([int(a) for a in np.atleast_1d(v)], scalar=v.ndim == 0)


def _binary(op: str, a: SymVec, b: SymVec) -> Optional[SymVec]:
    n = max(len(a.items), len(b.items))
    if len(a.items) not in (1, n) or len(b.items) not in (1, n):
        return None
    out = []
    for i in range(n):
        x, y = a.items[i % len(a.items)], b.items[i % len(b.items)]
        if isinstance(x, int) and isinstance(y, int):
            if op == "Div" and y == 0:
                return None
            out.append({"Add": x + y, "Sub": x - y, "Mul": x * y, "Div": int(x / y) if op == "Div" else 0}[op])
        elif op == "Mul" and (x == 1 or y == 1):
            out.append(y if x == 1 else x)
        else:
            out.append(UNKNOWN)
    return SymVec(out, a.scalar and b.scalar)


def _eval(g: Graph, n, vals: dict) -> Optional[SymVec]:
    """Symbolic value of ``n.output[0]`` or None."""
    op = n.op_type
    if op == "Shape":
        s = g.shape(n.input[0])
        if s is None:
            return None
        start, end = attr(n, "start", 0), attr(n, "end", None)
        return SymVec([d if isinstance(d, (int, str)) else UNKNOWN for d in s][start:end])
    ins = [vals.get(i) for i in n.input]
    if op in ("Cast", "Identity") and ins[0] is not None:
        return ins[0]
    if op == "Gather" and ins[0] is not None and ins[1] is not None and attr(n, "axis", 0) == 0:
        idx = ins[1]
        if not all(isinstance(i, int) for i in idx.items):
            return None
        return SymVec([ins[0].items[i] for i in idx.items], idx.scalar)
    if op == "Unsqueeze" and ins[0] is not None and ins[0].scalar:
        return SymVec(ins[0].items)
    if op == "Squeeze" and ins[0] is not None and len(ins[0].items) == 1:
        return SymVec(ins[0].items, scalar=True)
    if op == "Concat" and all(v is not None for v in ins):
        return SymVec([x for v in ins for x in v.items])
    if op == "Slice" and ins[0] is not None and all(v is not None for v in ins[1:]):
        return _slice(ins)
    if op in ("Add", "Sub", "Mul", "Div") and len(ins) == 2 and all(v is not None for v in ins):
        return _binary(op, ins[0], ins[1])
    return None


def _slice(ins) -> Optional[SymVec]:
    data, starts, ends = ins[0], ins[1], ins[2]
    steps = ins[4] if len(ins) > 4 and ins[4] is not None else SymVec([1])
    vals = [starts.items[0], ends.items[0], steps.items[0]]
    if not all(isinstance(v, int) for v in vals):
        return None
    return SymVec(data.items[slice(*vals)])


def symbolic_values(g: Graph) -> dict:
    """Tensor name -> :class:`SymVec` for every integer tensor we can follow."""
    vals: dict = {}
    for name in g.inits:
        v = _from_const(g.const(name))
        if v is not None:
            vals[name] = v
    for n in g.nodes:
        if n.op_type == "Constant":
            c = g.const(n.output[0])
            v = _from_const(c) if c is not None else None
        else:
            v = _eval(g, n, vals)
        if v is not None and n.output:
            vals[n.output[0]] = v
    return vals


def _reshape_target(g: Graph, n, sv: SymVec) -> Optional[list]:
    data_shape = g.shape(n.input[0]) or []
    if attr(n, "allowzero", 0):
        return None
    out = []
    for i, d in enumerate(sv.items):
        if isinstance(d, int):
            out.append(d)
        elif d is not UNKNOWN and i < len(data_shape) and data_shape[i] == d:
            out.append(0)
        else:
            out.append(-1)
    return out if out.count(-1) <= 1 else None


#: op type -> positions of integer "parameter" inputs that may be replaced by constants
SHAPE_INPUTS = {"Slice": (1, 2, 3, 4), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,), "Range": (0, 1, 2),
                "Split": (1,), "Pad": (1, 3), "Squeeze": (1,), "Unsqueeze": (1,), "ReduceSum": (1,),
                "ReduceMean": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "Resize": (3,),
                "OneHot": (1,)}


def _const_of(g: Graph, sv: SymVec, like: str) -> Optional[np.ndarray]:
    if not all(isinstance(v, int) for v in sv.items):
        return None
    dt = np.int32 if g.dtype(like) == 6 else np.int64
    arr = np.array(sv.items, dt)
    return arr.reshape(()) if sv.scalar else arr


def fold_reshape_shapes(g: Graph) -> int:
    """Replace run-time shape parameters (Reshape targets, Slice bounds, ...) by constants where known."""
    vals = symbolic_values(g)
    changed = 0
    for n in g.nodes:
        for pos in ((1,) if n.op_type == "Reshape" else SHAPE_INPUTS.get(n.op_type, ())):
            if pos >= len(n.input) or not n.input[pos] or g.is_const(n.input[pos]):
                continue
            sv = vals.get(n.input[pos])
            if sv is None:
                continue
            if n.op_type == "Reshape":
                target = _reshape_target(g, n, sv) if not sv.scalar else None
                value = None if target is None else np.array(target, np.int64)
            else:
                value = _const_of(g, sv, n.input[pos])
            if value is None:
                continue
            n.input[pos] = g.add_initializer(value, f"{n.name}/param{pos}")
            changed += 1
    if changed:
        g.remove_unused()
    return changed
