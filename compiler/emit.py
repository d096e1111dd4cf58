"""The reverse emitter: one generic walk over the graph in reverse topological order.

For each node on the differentiated path (its output depends on an explained
input *and* the explained value depends on it) the node's assigned rule is
asked for its backward mapping; contributions reaching a tensor from several
consumers are summed (one ``Sum`` node per fan-out point); constants and integer
tensors are skipped.  The walk knows nothing about LRP or gradients: rules do.

Problems are collected, not raised one by one: a node without a rule, a node
whose rule cannot handle it.  :func:`emit_backward` raises one
:class:`~onnxplain.compiler.errors.CompileError` listing all of them.
"""
from __future__ import annotations

from typing import Callable, Optional

from ..rules.base import Ctx, Unsupported
from .errors import CompileError, Problem
from .graph import Builder, Graph, node_label
from .schedule import delay_forward_work, recompute_activations


def differentiable_path(g: Graph, nodes: list, wrt, targets) -> set:
    """Float tensors that depend on one of ``wrt`` and on which one of ``targets`` depends."""
    fwd = set(wrt)
    for n in nodes:
        if any(i in fwd for i in n.input if i):
            fwd.update(o for o in n.output if o and g.is_float(o))
    bwd = set(targets)
    for n in reversed(nodes):
        if any(o in bwd for o in n.output if o):
            bwd.update(i for i in n.input if i)
    return {t for t in fwd & bwd if g.is_float(t) or t in wrt}


def path_nodes(g: Graph, nodes: list, on_path: set) -> list:
    """Nodes that need a backward mapping: some output lies on the path."""
    return [n for n in nodes if any(o in on_path for o in n.output if o)]


def _stand_ins(n, on_path: set) -> list:
    """After a problem at ``n``, keep walking (to find every problem) with stand-in tensors.

    The result is never used: a compilation with problems raises before anything is written.
    """
    return [i if i in on_path else None for i in n.input]


class _Accumulator:
    """Collects gradient contributions per tensor and sums them once, when first read."""

    def __init__(self, b: Builder):
        self.b = b
        self.parts: dict = {}

    def add(self, tensor: str, grad: str) -> None:
        self.parts.setdefault(tensor, []).append(grad)

    def total(self, tensor: str) -> Optional[str]:
        parts = self.parts.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            summed = self.b.scoped(f"{tensor}/fanout").op("Sum", *parts)
            self.parts[tensor] = [summed]
        return self.parts[tensor][0]


def emit_backward(g: Graph, nodes: list, seeds: dict, wrt: list, assign: Callable, out: list,
                  rule_log: Optional[dict] = None, key: Callable = node_label, raise_problems: bool = True) -> dict:
    """Emit the backward pass of ``nodes`` into ``out``.

    Parameters
    ----------
    g : Graph
        Static information and name allocation.
    nodes : list
        Forward nodes in topological order.
    seeds : dict
        Tensor name -> name of the gradient/relevance flowing into it.
    wrt : list of str
        Tensors whose gradient/relevance is wanted.
    assign : callable
        ``assign(node) -> Rule or None``.
    out : list
        Where emitted nodes are appended.
    rule_log : dict, optional
        Filled with ``key(node) -> rule name`` for every node on the path.
    raise_problems : bool
        Raise a CompileError listing every problem (default); else return them under ``"__problems__"``.

    Returns
    -------
    dict
        ``wrt`` tensor -> gradient tensor name (None where nothing reaches it).
    """
    on_path = differentiable_path(g, nodes, wrt, list(seeds))
    acc = _Accumulator(Builder(g, out))
    for t, s in seeds.items():
        acc.add(t, s)
    problems, start, delayed = [], len(out), False
    readers: dict = {}
    values: dict = {}  # forward tensors rules read in place of others (Ctx.value)
    for n in path_nodes(g, nodes, on_path):
        for i in dict.fromkeys(i for i in n.input if i):
            readers.setdefault(i, []).append(n)
    for n in reversed(nodes):
        gy = [acc.total(o) if o in on_path else None for o in n.output]
        if all(x is None for x in gy):
            continue
        rule = assign(n)
        if rule_log is not None:
            rule_log[key(n)] = rule.name if rule is not None else None
        if rule is None:
            problems.append(Problem(g.source, node_label(n), n.op_type, "no rule is assigned to this node",
                                    "add a rule for it (see `onnxplain check`)"))
            gins = _stand_ins(n, on_path)
            for i, gi in zip(n.input, gins):
                if gi is not None:
                    acc.add(i, gi)
            continue
        scope = f"{node_label(n)}/{rule.name}"
        ctx = Ctx(Builder(g, out, scope), g, [i in on_path for i in n.input], assign, readers, values)
        begin = len(out)
        try:
            gins = rule.backward(ctx, n, gy)
        except Unsupported as exc:
            problems.append(Problem(g.source, node_label(n), n.op_type, exc.message, exc.fix))
            gins = _stand_ins(n, on_path)
        if rule.delays_forward_work:
            delay_forward_work(g, out, begin, gy, scope)
            delayed = True
        if len(gins) != len(n.input):
            raise AssertionError(f"rule {rule.name} returned {len(gins)} inputs for {n.op_type} with {len(n.input)}")
        for i, gi in zip(n.input, gins):
            if gi is not None and i in on_path:
                acc.add(i, gi)
    if problems and raise_problems:
        raise CompileError(problems)
    if delayed and not problems:  # hinted rules: their readers of act(z) may recompute it from z
        recompute_activations(g, nodes, out, start, list(seeds.values()))
    result = {w: acc.total(w) for w in wrt}
    if not raise_problems:
        result["__problems__"] = problems
    return result
