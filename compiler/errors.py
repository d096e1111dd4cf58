"""Error reporting: every problem found, each with file, node, op type and a fix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Problem:
    """One problem found in a model or a request.

    Attributes
    ----------
    source : str
        The file (or "model" for an in-memory model).
    node : str or None
        The node name, where the problem belongs to a node.
    op_type : str or None
        The node's op type.
    message : str
        What is wrong (including what is supported).
    fix : str
        What the user can do about it.
    """

    source: str
    node: Optional[str]
    op_type: Optional[str]
    message: str
    fix: str = ""

    def __str__(self) -> str:
        where = self.source
        if self.node is not None:
            where += f": node '{self.node}'"
        if self.op_type:
            where += f" ({self.op_type})"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f" -> {self.fix}"
        return text


class OnnxplainError(Exception):
    """Base class of the errors onnxplain raises on bad input."""


class CompileError(OnnxplainError, ValueError):
    """Compilation is impossible; ``problems`` lists every reason found."""

    def __init__(self, problems):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} found:" if n > 1 else ""
        lines = [head] if head else []
        lines += [("  - " if n > 1 else "") + str(p) for p in self.problems]
        super().__init__("\n".join(lines))


class InputError(OnnxplainError, ValueError):
    """Bad data passed to a compiled model (shape, dtype, NaN, target out of range)."""
