"""Node selectors for rule assignment: op type, name, position on the data path, and combinations.

A selector is a predicate ``sel(node, actx) -> bool`` where ``actx`` is the
:class:`~onnxplain.compiler.assign.AssignContext` of the compilation.  Composites
are ordered lists of ``(selector, rule)``; the first match wins.

Spec form (JSON/YAML rule files), all keys of one mapping must hold::

    {"op": "Conv"}                      op type (or a list of op types)
    {"name": "features\\\\.0.*"}          node name, regular expression (``re.fullmatch``)
    {"position": "first"}               first linear layer(s) seen from an explained input
    {"position": "last"}                last linear layer(s) before the explained output
    {"index": [0, 3]}                   linear layers 0, 1, 2 along the path (negative counts from the end)
    {"linear": true}                    any linear layer (Conv, ConvTranspose, Gemm, MatMul)
    {"any": [spec, spec]}               either
    {"not": spec}                       negation
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..compiler.errors import CompileError, Problem


@dataclass(frozen=True)
class Selector:
    """A named predicate over (node, assignment context)."""

    text: str
    fn: Callable

    def __call__(self, node, actx) -> bool:
        return bool(self.fn(node, actx))

    def __str__(self) -> str:
        return self.text


def op(*types: str) -> Selector:
    return Selector(f"op in {list(types)}", lambda n, a: n.op_type in types)


def name(pattern: str) -> Selector:
    rx = re.compile(pattern)
    return Selector(f"name ~ {pattern!r}", lambda n, a: rx.fullmatch(n.name) is not None)


def linear() -> Selector:
    return Selector("linear layer", lambda n, a: a.is_linear(n))


def first() -> Selector:
    return Selector("first linear layer", lambda n, a: n.name in a.first)


def last() -> Selector:
    return Selector("last linear layer", lambda n, a: n.name in a.last)


def index(lo: int, hi: int) -> Selector:
    """Linear layers ``lo <= i < hi`` along the path (Python slice semantics, negatives from the end)."""
    def fn(n, a):
        i = a.index(n)
        return i >= 0 and i in range(len(a.linear))[slice(lo, hi)]
    return Selector(f"linear index in [{lo}, {hi})", fn)


def all_of(*sels: Selector) -> Selector:
    return Selector(" and ".join(str(s) for s in sels), lambda n, a: all(s(n, a) for s in sels))


def any_of(*sels: Selector) -> Selector:
    return Selector("(" + " or ".join(str(s) for s in sels) + ")", lambda n, a: any(s(n, a) for s in sels))


def not_(sel: Selector) -> Selector:
    return Selector(f"not ({sel})", lambda n, a: not sel(n, a))


_KEYS = ("op", "name", "position", "index", "linear", "any", "not")


def from_spec(spec, where: str = "rules spec") -> Selector:
    """Build a selector from its JSON/YAML form; raise CompileError naming every bad key."""
    if not isinstance(spec, dict) or not spec:
        raise CompileError([Problem(where, None, None, f"a selector must be a non-empty mapping, got {spec!r}",
                                    f"use keys among {', '.join(_KEYS)}")])
    bad = [k for k in spec if k not in _KEYS]
    if bad:
        raise CompileError([Problem(where, None, None, f"unknown selector key(s) {bad}",
                                    f"use keys among {', '.join(_KEYS)}")])
    parts = []
    if "op" in spec:
        ops = spec["op"] if isinstance(spec["op"], list) else [spec["op"]]
        parts.append(op(*ops))
    if "name" in spec:
        try:
            parts.append(name(spec["name"]))
        except re.error as exc:
            raise CompileError([Problem(where, None, None, f"bad name pattern {spec['name']!r}: {exc}",
                                        "give a Python regular expression")]) from None
    if "position" in spec:
        if spec["position"] not in ("first", "last"):
            raise CompileError([Problem(where, None, None, f"position must be 'first' or 'last', got "
                                        f"{spec['position']!r}", "use first or last")])
        parts.append(first() if spec["position"] == "first" else last())
    if "index" in spec:
        lo_hi = spec["index"]
        if not (isinstance(lo_hi, list) and len(lo_hi) == 2):
            raise CompileError([Problem(where, None, None, f"index must be [low, high], got {lo_hi!r}",
                                        "e.g. [0, 2] for the first two linear layers")])
        parts.append(index(int(lo_hi[0]), int(lo_hi[1])))
    if spec.get("linear"):
        parts.append(linear())
    if "any" in spec:
        parts.append(any_of(*[from_spec(s, where) for s in spec["any"]]))
    if "not" in spec:
        parts.append(not_(from_spec(spec["not"], where)))
    return parts[0] if len(parts) == 1 else all_of(*parts)
