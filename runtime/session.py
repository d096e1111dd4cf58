"""Run compiled models in ONNX Runtime: providers, input checks, targets, batching.

This module needs onnxruntime and numpy only; it never touches onnx-graphsurgeon.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

from ..compiler.errors import InputError

_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def default_providers() -> list:
    """CUDA first where ``onnxruntime-gpu`` provides it, then CPU."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


def make_session(model, providers: Optional[Sequence[str]] = None, threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` for a ModelProto, bytes or path."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the optional `target` input is an overridable initializer: ORT warns about it
    if threads:
        so.intra_op_num_threads = threads
    data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    return ort.InferenceSession(data, so, providers=list(providers or default_providers()))


def check_array(name: str, value, declared, expected_dtype) -> np.ndarray:
    """Validate one input array against the model's declaration; return it in the expected dtype."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"input '{name}': expected a numeric array, got dtype {arr.dtype}")
    if expected_dtype is not None and arr.dtype != expected_dtype:
        if arr.dtype.kind != "f" and np.dtype(expected_dtype).kind == "f":
            arr = arr.astype(expected_dtype)
        elif np.dtype(expected_dtype).kind == "f":
            arr = arr.astype(expected_dtype)
        else:
            raise InputError(f"input '{name}': expected dtype {np.dtype(expected_dtype)}, got {arr.dtype}")
    if declared is not None:
        if arr.ndim != len(declared):
            raise InputError(f"input '{name}': expected {len(declared)} dimensions {_fmt(declared)}, "
                             f"got shape {arr.shape}")
        bad = [i for i, d in enumerate(declared) if isinstance(d, int) and d != arr.shape[i]]
        if bad:
            raise InputError(f"input '{name}': expected shape {_fmt(declared)}, got {arr.shape} "
                             f"(dimension {bad[0]} differs)")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad_items = sorted(set(np.argwhere(~np.isfinite(arr))[:, 0].tolist())) if arr.ndim else [0]
        raise InputError(f"input '{name}' contains NaN or Inf (samples {bad_items[:10]}); "
                         "explanations of non-finite inputs are meaningless: clean the data first")
    return arr


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


class CompiledRunner:
    """Runs a compiled model (a ModelProto produced by :func:`onnxplain.compile`)."""

    def __init__(self, model, providers=None, threads=None):
        self.model = model
        meta = {p.key: p.value for p in model.metadata_props}
        self.outputs = json.loads(meta["onnxplain.outputs"])
        self.target_input = meta.get("onnxplain.target_input", "target")
        self.explained_output = meta.get("onnxplain.explained_output")
        self.session = make_session(model, providers, threads)
        self.input_meta = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.n_classes = self._class_count()

    def _class_count(self) -> Optional[int]:
        out = next(o for o in self.session.get_outputs() if o.name == self.explained_output)
        dims = out.shape[1:]
        return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None

    def feeds(self, inputs: dict, target) -> dict:
        feeds = {}
        for name, meta in self.input_meta.items():
            if name == self.target_input:
                continue
            if name not in inputs:
                raise InputError(f"missing input '{name}'; the model's inputs are "
                                 f"{[n for n in self.input_meta if n != self.target_input]}")
            feeds[name] = check_array(name, inputs[name], list(meta.shape), _NP_TYPES.get(meta.type))
        extra = set(inputs) - set(self.input_meta)
        if extra:
            raise InputError(f"unknown inputs {sorted(extra)}; the model's inputs are {list(self.input_meta)}")
        if target is not None:
            feeds[self.target_input] = self.check_target(target, next(iter(feeds.values())).shape[0])
        return feeds

    def check_target(self, target, n: int) -> np.ndarray:
        t = np.asarray(target)
        if t.dtype.kind not in "iu":
            raise InputError(f"target must hold integer class indices, got dtype {t.dtype}")
        t = np.broadcast_to(t.astype(np.int64).reshape(-1), (n,)) if t.size == 1 else t.astype(np.int64)
        if t.shape != (n,):
            raise InputError(f"target must have one entry per sample: expected shape ({n},), got {t.shape}")
        if self.n_classes is not None and np.any(t >= self.n_classes):
            bad = t[t >= self.n_classes]
            raise InputError(f"target {bad.tolist()} out of range: the explained output "
                             f"'{self.explained_output}' has {self.n_classes} entries per sample "
                             f"(valid: 0..{self.n_classes - 1}, or -1 for the top-scoring one)")
        return np.ascontiguousarray(t)

    def run(self, inputs: dict, target=None) -> dict:
        """Run once; return every output by name."""
        feeds = self.feeds(inputs, target)
        values = self.session.run(None, feeds)
        return dict(zip(self.output_names, values))
