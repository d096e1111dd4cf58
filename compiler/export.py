"""Final assembly of a compiled model: outputs, opset and IR version, metadata, checks, atomic save."""
from __future__ import annotations

import json
import os
import tempfile

import onnx
from onnx import helper

from .errors import CompileError, Problem

#: Highest IR version we write (ONNX Runtime 1.17+ reads IR <= 9 for opset <= 20, 10 for opset 21+).
MAX_IR_VERSION = 10


def set_versions(model: onnx.ModelProto) -> None:
    """Set the IR version explicitly: the lowest one the opsets need, at most :data:`MAX_IR_VERSION`."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = min(max(needed, 8), MAX_IR_VERSION)


def add_metadata(model: onnx.ModelProto, entries: dict) -> None:
    """Store ``entries`` (JSON-encoded unless strings) in ``metadata_props`` under ``onnxplain.*``."""
    for key, value in entries.items():
        full = f"onnxplain.{key}"
        for p in list(model.metadata_props):
            if p.key == full:
                model.metadata_props.remove(p)
        p = model.metadata_props.add()
        p.key = full
        p.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def check(model: onnx.ModelProto, source: str = "model") -> None:
    """Run the full ONNX checker and verify every node is in the default domain.

    The checker runs on a light copy whose large weights are typed graph inputs: the graph,
    its types and shapes are what it verifies, and serialising hundreds of megabytes of weights
    for it dominated compile time.  (The test-suite runs the full checker on whole models.)
    """
    from .graph import all_nodes, strip_weights

    model = strip_weights(model)[0]
    bad = [n for n in all_nodes(model.graph) if n.domain not in ("", "ai.onnx")]
    if bad:
        raise CompileError([Problem(source, n.name, f"{n.domain}.{n.op_type}",
                                    "the model uses an op outside the default ONNX domain, which a compiled model "
                                    "may not contain (it must load in any plain ONNX Runtime)",
                                    "re-export without it (e.g. skl2onnx with options {'zipmap': False})")
                            for n in bad])
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise CompileError([Problem(source, None, None, f"the compiled model fails onnx.checker: {exc}",
                                    "this is a bug in onnxplain; please report it with the model")]) from None


def default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp's 0600 honours no umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path, write, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``: complete or absent.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.
    write : callable, str or bytes
        Receives the open temporary file; a str/bytes is written as is.
    binary : bool
        Open the temporary file in binary mode.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".onnxplain-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            if callable(write):
                write(fh)
            else:
                fh.write(write)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` through a temporary file and a rename: complete or absent."""
    atomic_write(path, model.SerializeToString())
