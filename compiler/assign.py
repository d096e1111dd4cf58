"""Rule assignment: what a composite or preset needs to know about each node's place in the graph.

:class:`AssignContext` describes the differentiated path of one compilation:
the nodes on it in topological order, which of them are *linear layers* (Conv,
ConvTranspose, Gemm, MatMul with a constant operand), each linear layer's index
along the path, and which linear layers come first (no other linear layer between
them and an explained input, on any route) or last (none between them and the
explained output).  Positions come from the data flow, not from definition order,
so functional additions, concatenations and branches are seen as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .emit import differentiable_path, path_nodes
from .graph import Graph

#: ops treated as linear layers when one operand is on the path and the others are constant
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def is_linear(g: Graph, node, on_path: set) -> bool:
    """A linear layer: a LINEAR_OPS node whose only path input is its data input (input 0 or 1)."""
    if node.op_type not in LINEAR_OPS:
        return False
    path_inputs = [i for i, name in enumerate(node.input) if name in on_path]
    return len(path_inputs) == 1 and all(g.is_const(n) for i, n in enumerate(node.input)
                                         if n and i not in path_inputs)


@dataclass
class AssignContext:
    """The path of one compilation and the position of every linear layer on it."""

    g: Graph
    nodes: list
    on_path: set
    linear: list = field(default_factory=list)  # node names in topological order
    first: set = field(default_factory=set)
    last: set = field(default_factory=set)
    batchnorm: str = "fold"

    @classmethod
    def build(cls, g: Graph, wrt: list, explained: str, batchnorm: str = "fold") -> "AssignContext":
        on_path = differentiable_path(g, g.nodes, wrt, [explained])
        nodes = path_nodes(g, g.nodes, on_path)
        ctx = cls(g=g, nodes=nodes, on_path=on_path, batchnorm=batchnorm)
        ctx.linear = [n.name for n in nodes if is_linear(g, n, on_path)]
        ctx.first, ctx.last = ctx._ends()
        return ctx

    def _ends(self) -> tuple:
        """Linear layers with no linear layer upstream (first) / downstream (last) on the path."""
        lin = set(self.linear)
        upstream: dict = {}  # tensor -> does a linear layer lie between an input and it?
        first = set()
        for n in self.nodes:
            seen = any(upstream.get(i, False) for i in n.input if i in self.on_path)
            if n.name in lin and not seen:
                first.add(n.name)
            for o in n.output:
                upstream[o] = seen or n.name in lin
        downstream: dict = {}
        last = set()
        for n in reversed(self.nodes):
            seen = any(downstream.get(o, False) for o in n.output if o)
            if n.name in lin and not seen:
                last.add(n.name)
            for i in n.input:
                if i in self.on_path:
                    downstream[i] = downstream.get(i, False) or seen or n.name in lin
        return first, last

    def index(self, node) -> int:
        """Position of a linear layer along the path (0-based), or -1 for other nodes."""
        return self.linear.index(node.name) if node.name in self.linear else -1

    def is_linear(self, node) -> bool:
        return node.name in self.linear
