"""Device-resident inputs and outputs: ONNX Runtime IO binding without host copies.

A compiled model runs on CUDA when ``onnxruntime-gpu`` is installed (see
:func:`onnxplain.runtime.session.default_providers`). Plain NumPy inputs go through
``InferenceSession.run`` (ONNX Runtime copies them to the GPU and the outputs back). Inputs that
already live on a device are bound by pointer instead (``IOBinding.bind_input``), and the outputs
are bound to the same device and returned there:

* ``onnxruntime.OrtValue`` (any device): bound as is; outputs come back as ``OrtValue``;
* objects exposing ``__cuda_array_interface__`` (PyTorch CUDA tensors, CuPy, Numba): bound by
  their data pointer, no copy; outputs come back as PyTorch tensors when the inputs were PyTorch
  tensors, else as :class:`DeviceArray` (which exposes ``__cuda_array_interface__`` itself, so
  ``torch.as_tensor``/``cupy.asarray`` wrap it without a copy);
* objects exposing only ``__dlpack__`` on a CUDA device (e.g. JAX): wrapped by
  ``OrtValue.from_dlpack`` where this ONNX Runtime has it.

This module never imports torch or CuPy: it uses ``sys.modules`` to reach the library of an
object the caller passed (which is then already imported).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..compiler.errors import InputError

_DLPACK_CPU, _DLPACK_CUDA = 1, 2
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


@dataclass
class BoundTensor:
    """A tensor to bind by pointer: where it lives, its element type, shape and address.

    ``owner`` keeps the producing object alive until the run is over.
    """

    device_type: str
    device_id: int
    dtype: np.dtype
    shape: tuple
    ptr: int
    owner: Any = None


def _library(value) -> str:
    return type(value).__module__.split(".")[0]


def is_device_value(value) -> bool:
    """True for values that :func:`bind_run` binds without a host copy (OrtValue, GPU arrays)."""
    import onnxruntime as ort

    if value is None or isinstance(value, np.ndarray):
        return False
    if isinstance(value, ort.OrtValue):
        return True
    if _cuda_interface(value) is not None:
        return True
    dev = getattr(value, "__dlpack_device__", None)
    if callable(dev):
        try:
            return int(dev()[0]) != _DLPACK_CPU
        except Exception:  # noqa: BLE001 - not a usable DLPack producer: treated as a host array
            return False
    return False


def _cuda_interface(value) -> Optional[dict]:
    """``__cuda_array_interface__`` of ``value`` (of its detached view for tensors that require grad)."""
    if not hasattr(type(value), "__cuda_array_interface__"):
        return None
    try:
        return value.__cuda_array_interface__
    except (RuntimeError, AttributeError, TypeError):
        detach = getattr(value, "detach", None)
        if detach is None:
            return None
        try:
            return detach().__cuda_array_interface__
        except (RuntimeError, AttributeError, TypeError):
            return None


def _device_index(value) -> int:
    """CUDA ordinal of a GPU array: torch ``.device.index``, CuPy ``.device.id``; 0 when unknown."""
    dev = getattr(value, "device", None)
    for attr in ("index", "id"):
        idx = getattr(dev, attr, None)
        if isinstance(idx, int):
            return idx
    return 0


def describe(name: str, value) -> Any:
    """An ``OrtValue`` or a :class:`BoundTensor` for a device-resident ``value``.

    Raises
    ------
    InputError
        For a non-contiguous GPU array (pass ``.contiguous()``/``cupy.ascontiguousarray``) or a DLPack
        object this ONNX Runtime cannot import.
    """
    import onnxruntime as ort

    if isinstance(value, ort.OrtValue):
        return value
    cai = _cuda_interface(value)
    if cai is not None:
        dtype = np.dtype(cai["typestr"])
        shape = tuple(int(d) for d in cai["shape"])
        strides = cai.get("strides")
        if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize):
            raise InputError(f"input '{name}': the GPU array is not C-contiguous (strides {tuple(strides)}); "
                             "pass a contiguous copy (torch: .contiguous(), CuPy: cupy.ascontiguousarray)")
        return BoundTensor("cuda", _device_index(value), dtype, shape, int(cai["data"][0]), value)
    if not hasattr(ort.OrtValue, "from_dlpack"):
        raise InputError(f"input '{name}': {type(value).__name__} exposes only DLPack and this onnxruntime "
                         f"{ort.__version__} has no OrtValue.from_dlpack; pass a NumPy array, an OrtValue or "
                         "an object with __cuda_array_interface__")
    return ort.OrtValue.from_dlpack(value)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= max(int(d), 1)
    return tuple(reversed(strides))


def value_shape_dtype(value) -> tuple:
    """(shape, numpy dtype) of an OrtValue or a :class:`BoundTensor`."""
    if isinstance(value, BoundTensor):
        return value.shape, value.dtype
    return tuple(value.shape()), np.dtype(_ORT_TYPES.get(value.data_type(), np.float32))


def value_device(value) -> tuple:
    """(device_type, device_id) of an OrtValue or a :class:`BoundTensor`."""
    if isinstance(value, BoundTensor):
        return value.device_type, value.device_id
    name = value.device_name().lower()
    return ("cuda" if name in ("cuda", "gpu") else name), 0


def synchronize_producer(value) -> None:
    """Wait for pending work of the library that produced a GPU array (ONNX Runtime uses its own stream).

    PyTorch and CuPy are synchronised here; other producers must finish their work before the call.
    """
    lib = _library(value)
    if lib == "torch":
        torch = sys.modules["torch"]
        torch.cuda.current_stream(_device_index(value)).synchronize()
    elif lib == "cupy":
        sys.modules["cupy"].cuda.get_current_stream().synchronize()


def bind_run(session, feeds: dict, output_device: tuple = ("cpu", 0)) -> list:
    """Run ``session`` with IO binding; return the outputs (``OrtValue``) on ``output_device``.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
    feeds : dict
        Input name -> ``OrtValue``, :class:`BoundTensor` (bound by pointer) or host array (copied by
        ONNX Runtime to where the consuming node runs).
    output_device : (str, int)
        Where the outputs are allocated: ``("cuda", 0)`` keeps them on the GPU.

    Returns
    -------
    list of onnxruntime.OrtValue
        In the order of ``session.get_outputs()``.
    """
    import onnxruntime as ort

    io = session.io_binding()
    keep = []  # host arrays shared (not copied) by their CPU OrtValues, alive until the run is over
    for name, value in feeds.items():
        if isinstance(value, BoundTensor):
            io.bind_input(name, value.device_type, value.device_id, value.dtype, list(value.shape), value.ptr)
        elif isinstance(value, ort.OrtValue):
            io.bind_ortvalue_input(name, value)
        else:  # host array; an OrtValue also binds optional inputs backed by initializers (`target`)
            arr = np.ascontiguousarray(value)
            keep.append(arr)
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
    for out in session.get_outputs():
        io.bind_output(out.name, output_device[0], output_device[1])
    session.run_with_iobinding(io)
    return io.get_outputs()


class DeviceArray:
    """An output left on the GPU: wraps the ``OrtValue``; no copy until :meth:`numpy`.

    Exposes ``__cuda_array_interface__`` (version 2), so ``torch.as_tensor(a, device="cuda")`` or
    ``cupy.asarray(a)`` view the same memory (they keep this object, and with it the buffer, alive).
    """

    def __init__(self, ortvalue, device_id: int = 0):
        self.ortvalue = ortvalue
        self.device_id = device_id
        self.shape = tuple(ortvalue.shape())
        self.dtype = np.dtype(_ORT_TYPES.get(ortvalue.data_type(), np.float32))

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (int(self.ortvalue.data_ptr()), False),
                "version": 2, "strides": None}

    def numpy(self) -> np.ndarray:
        """Copy to host memory."""
        return self.ortvalue.numpy()

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device_id})"


def wrap_outputs(values: list, like, device: tuple) -> list:
    """Outputs in the caller's currency (``like``: the first device-resident input).

    ``OrtValue`` inputs (and any CPU outputs) give ``OrtValue`` outputs; PyTorch CUDA tensors give
    ``torch.Tensor`` views of the outputs (no copy); other GPU arrays (CuPy, Numba, DLPack producers)
    give :class:`DeviceArray` (``__cuda_array_interface__``, no copy).
    """
    import onnxruntime as ort

    if device[0] != "cuda" or like is None or isinstance(like, ort.OrtValue):
        return list(values)
    arrays = [DeviceArray(v, device[1]) for v in values]
    if _library(like) == "torch":
        torch = sys.modules["torch"]
        return [torch.as_tensor(a, device=f"cuda:{device[1]}") for a in arrays]
    return arrays


def sample_count(value) -> int:
    """Length of the first axis of a host array, an OrtValue or a GPU array."""
    import onnxruntime as ort

    if isinstance(value, ort.OrtValue):
        return int(value.shape()[0])
    return len(value)


def take(value, start: int, stop: int):
    """Samples ``start:stop`` of ``value``: a NumPy slice for host arrays, the array's own slicing on a device."""
    import onnxruntime as ort

    if not is_device_value(value):
        return np.asarray(value)[start:stop]
    if start == 0 and stop >= sample_count(value):
        return value
    if isinstance(value, ort.OrtValue):
        raise InputError(f"an OrtValue input of {sample_count(value)} samples cannot be split into batches of "
                         f"{stop - start}: pass batch_size >= the number of samples, or a torch/CuPy array")
    return value[start:stop]


def concat(pieces: list):
    """Join per-batch outputs along the first axis, staying on their device (torch.cat / cupy.concatenate)."""
    if len(pieces) == 1:
        return pieces[0]
    first = pieces[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(pieces)
    lib = _library(first)
    if lib == "torch":
        return sys.modules["torch"].cat(pieces)
    if "cupy" in sys.modules:
        cp = sys.modules["cupy"]
        return cp.concatenate([cp.asarray(p) for p in pieces])
    raise InputError("outputs on a device can only be joined for torch or CuPy inputs; pass batch_size >= the "
                     "number of samples")
