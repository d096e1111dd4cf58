"""Run compiled models in ONNX Runtime: providers, input checks, targets, batching.

This module needs onnxruntime and numpy only; it never touches onnx-graphsurgeon.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np

from ..compiler.errors import InputError
from .heap import release_freed_heap

_NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def default_providers(available: Optional[Sequence[str]] = None) -> list:
    """CUDA first where ``onnxruntime-gpu`` provides it, then CPU (always last, as the fallback).

    Parameters
    ----------
    available : list of str, optional
        The providers to choose from (default: ``onnxruntime.get_available_providers()``).
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider",) if p in available] + ["CPUExecutionProvider"]


def providers_for(device: Optional[str] = None, available: Optional[Sequence[str]] = None) -> list:
    """Execution providers for a device name: ``None``/``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.

    Raises
    ------
    InputError
        For ``"cuda"`` when this onnxruntime has no CUDA provider (install ``onnxruntime-gpu``), or an
        unknown device name.
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    dev = (device or "auto").lower()
    if dev == "auto":
        return default_providers(available)
    if dev == "cpu":
        return ["CPUExecutionProvider"]
    if dev == "cuda" or dev.startswith("cuda:"):
        if "CUDAExecutionProvider" not in available:
            raise InputError(f"device '{device}': this onnxruntime has no CUDAExecutionProvider (available: "
                             f"{list(available)}); install onnxruntime-gpu (see docs/cuda.md)")
        index = dev.partition(":")[2] or "0"
        if not index.isdigit():
            raise InputError(f"device '{device}': expected cuda or cuda:K with an integer K")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise InputError(f"unknown device '{device}': use 'auto', 'cpu', 'cuda' or 'cuda:K'")


def make_session(model, providers: Optional[Sequence] = None, threads: Optional[int] = None):
    """An ``onnxruntime.InferenceSession`` for a ModelProto, bytes or path.

    ``providers`` are names or ``(name, options)`` pairs, as ONNX Runtime takes them (default:
    :func:`default_providers`). ``threads`` sets the intra-op threads of the CPU provider (also used
    by nodes that a GPU provider leaves on the CPU).  CPU sessions run without ONNX Runtime's memory
    pattern (``enable_mem_pattern=False``): lower peak memory for explanation graphs, same speed.
    Once the session is built, the heap memory freed while building it is handed back to the
    operating system (:func:`.heap.release_freed_heap`, glibc only): ResNet-50 ``lrp.epsilon_plus_flat``,
    batch 8, peak resident memory 1037 -> 824 MiB.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # the optional `target` input is an overridable initializer: ORT warns about it
    if threads:
        so.intra_op_num_threads = threads
    providers = list(providers or default_providers())
    if any((p[0] if isinstance(p, (tuple, list)) else p) == "CUDAExecutionProvider" for p in providers):
        data = _cuda_ready(model)
    else:
        data = model.SerializeToString() if hasattr(model, "SerializeToString") else model
        # the memory pattern (one block per run, laid out from the first run's allocations) packs the
        # many long-lived activations of an explanation graph poorly: ResNet-50 batch 8, lrp.epsilon_plus_flat
        # peak RSS 1466 -> 1067 MiB, plain forward 399 -> 347 MiB, run time unchanged (docs/speed.md)
        so.enable_mem_pattern = False
    session = ort.InferenceSession(data, so, providers=providers)
    del data
    release_freed_heap()
    return session


def _cuda_ready(model):
    """``model`` (ModelProto, bytes or path) for ONNX Runtime, with the ops the CUDA provider lacks
    rewritten (:mod:`.cuda_rewrite`); the caller's ModelProto is not changed."""
    import onnx

    from .cuda_rewrite import for_cuda, needs_cuda_rewrite

    if hasattr(model, "SerializeToString"):
        if not needs_cuda_rewrite(model):
            return model.SerializeToString()
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = onnx.load_from_string(model) if isinstance(model, (bytes, bytearray)) else onnx.load(str(model))
    return proto.SerializeToString() if for_cuda(proto) else model


def session_device(session) -> tuple:
    """``("cuda", device_id)`` when the session runs on CUDA, else ``("cpu", 0)``."""
    if "CUDAExecutionProvider" not in session.get_providers():
        return "cpu", 0
    opts = session.get_provider_options().get("CUDAExecutionProvider", {})
    return "cuda", int(opts.get("device_id", 0) or 0)


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
    check_shape(name, arr.shape, declared)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        bad_items = sorted(set(np.argwhere(~np.isfinite(arr))[:, 0].tolist())) if arr.ndim else [0]
        raise InputError(f"input '{name}' contains NaN or Inf (samples {bad_items[:10]}); "
                         "explanations of non-finite inputs are meaningless: clean the data first")
    return arr


def check_shape(name: str, shape: tuple, declared) -> None:
    """Raise :class:`InputError` when ``shape`` does not match the declared (partly symbolic) shape."""
    if declared is None:
        return
    if len(shape) != len(declared):
        raise InputError(f"input '{name}': expected {len(declared)} dimensions {_fmt(declared)}, "
                         f"got shape {tuple(shape)}")
    bad = [i for i, d in enumerate(declared) if isinstance(d, int) and d != shape[i]]
    if bad:
        raise InputError(f"input '{name}': expected shape {_fmt(declared)}, got {tuple(shape)} "
                         f"(dimension {bad[0]} differs)")


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

    def _model_inputs(self, inputs: dict) -> list:
        """``[(name, meta)]`` of the model's data inputs, after checking ``inputs`` names exactly those."""
        names = [n for n in self.input_meta if n != self.target_input]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InputError(f"missing input '{missing[0]}'; the model's inputs are {names}")
        extra = set(inputs) - set(self.input_meta)
        if extra:
            raise InputError(f"unknown inputs {sorted(extra)}; the model's inputs are {list(self.input_meta)}")
        return [(n, self.input_meta[n]) for n in names]

    def feeds(self, inputs: dict, target) -> dict:
        feeds = {name: check_array(name, inputs[name], list(meta.shape), _NP_TYPES.get(meta.type))
                 for name, meta in self._model_inputs(inputs)}
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
        """Run once; return every output by name.

        NumPy inputs give NumPy outputs (``InferenceSession.run``; on CUDA, ONNX Runtime copies them).
        Device-resident inputs (``OrtValue``, PyTorch CUDA tensors, CuPy arrays, anything with
        ``__cuda_array_interface__``) are bound by pointer (IO binding, no copy) and the outputs stay
        on that device: ``OrtValue`` for ``OrtValue`` inputs, ``torch.Tensor`` for torch inputs,
        :class:`~.device.DeviceArray` for other GPU arrays (CuPy, ...). Device inputs are checked
        for shape and dtype (which must match the model's, no conversion on the device), not for
        NaN/Inf (that would need a copy to the host).
        """
        from . import device

        if not any(device.is_device_value(v) for v in list(inputs.values()) + [target]):
            feeds = self.feeds(inputs, target)
            values = self.session.run(None, feeds)
            return dict(zip(self.output_names, values))
        feeds, like, where = self.device_feeds(inputs, target)
        values = device.bind_run(self.session, feeds, where)
        return dict(zip(self.output_names, device.wrap_outputs(values, like, where)))

    def device_feeds(self, inputs: dict, target) -> tuple:
        """(feeds for :func:`~.device.bind_run`, the first device input, its device) after checks."""
        from . import device

        feeds, like, where = {}, None, None
        for name, meta in self._model_inputs(inputs):
            value = inputs[name]
            if not device.is_device_value(value):
                feeds[name] = check_array(name, value, list(meta.shape), _NP_TYPES.get(meta.type))
                continue
            bound = device.describe(name, value)
            shape, dtype = device.value_shape_dtype(bound)
            want = _NP_TYPES.get(meta.type)
            if want is not None and dtype != want:
                raise InputError(f"input '{name}': expected dtype {np.dtype(want)}, got {dtype} (device arrays "
                                 "are not converted: convert them before the call)")
            check_shape(name, shape, list(meta.shape))
            device.synchronize_producer(value)
            feeds[name] = bound
            if like is None:
                like, where = value, device.value_device(bound)
        n = next(iter(device.value_shape_dtype(v)[0] if not isinstance(v, np.ndarray) else v.shape
                      for v in feeds.values()))[0]
        if target is not None:
            feeds[self.target_input] = self._device_target(target, n)
        return feeds, like, where or session_device(self.session)

    def _device_target(self, target, n: int):
        from . import device

        if not device.is_device_value(target):
            return self.check_target(target, n)
        bound = device.describe(self.target_input, target)
        shape, dtype = device.value_shape_dtype(bound)
        if dtype != np.int64 or tuple(shape) != (n,):
            raise InputError(f"target on a device must be int64 of shape ({n},), got {dtype} {tuple(shape)}")
        device.synchronize_producer(target)
        return bound
