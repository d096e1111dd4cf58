"""onnxplain: compile any ONNX model into an ONNX model whose extra outputs are explanation maps.

The public API:

* :func:`compile` - ONNX model in, ``onnx.ModelProto`` with explanation outputs out.
* :func:`compile_file` - the same, written atomically to a file.
* :class:`Explainer` - compile and run in ONNX Runtime, in batches.
* :func:`methods` - the method registry.
* :func:`check` - the node -> rule table of a model, and every problem.

Example
-------
>>> import onnxplain
>>> compiled = onnxplain.compile("model.onnx", ["gradient", "integrated_gradients"], steps=32)  # doctest: +SKIP
>>> exp = onnxplain.Explainer("model.onnx", "gradient")  # doctest: +SKIP
>>> maps = exp.explain(x)["gradient"]  # doctest: +SKIP
"""
from __future__ import annotations

from ._version import __version__
from .api import Explainer, check, compile, compile_file, methods
from .compiler.errors import CompileError, InputError, OnnxplainError, Problem

__all__ = ["__version__", "compile", "compile_file", "Explainer", "methods", "check", "CompileError",
           "InputError", "OnnxplainError", "Problem"]
