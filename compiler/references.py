"""Reference inputs x' of integrated gradients: zeros, black, white, gray, mean, a number or an array."""
from __future__ import annotations

import numpy as np
from onnx import helper

from .errors import CompileError, Problem
from .graph import Builder, Graph


def _per_channel(value, rank: int, dtype) -> np.ndarray:
    """A scalar, or one value per channel (axis 1) shaped to broadcast over ``[N, C, ...]``."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return arr
    return arr.reshape((1, -1) + (1,) * (rank - 2))


def reference_tensor(b: Builder, g: Graph, x: str, params: dict) -> str:
    """The reference x' for input ``x`` as a tensor broadcastable to ``x``."""
    ref = params["reference"]
    rank = g.rank(x)
    dtype = helper.tensor_dtype_to_np_dtype(g.dtype(x))
    low, high = params.get("low", 0.0), params.get("high", 1.0)
    if isinstance(ref, str):
        if ref == "zeros":
            return b.const(np.zeros((), dtype))
        if ref == "black":
            return b.const(_per_channel(low, rank, dtype))
        if ref == "white":
            return b.const(_per_channel(high, rank, dtype))
        if ref == "gray":
            mid = (np.asarray(low, np.float64) + np.asarray(high, np.float64)) / 2
            return b.const(_per_channel(mid, rank, dtype))
        if ref == "mean":
            return b.reduce("ReduceMean", x, list(range(2, rank)) or [1], keepdims=1)
    arr = np.asarray(ref, dtype=dtype)
    shape = g.shape(x)
    try:
        np.broadcast_shapes(arr.shape, tuple(d if isinstance(d, int) else 1 for d in shape))
        if arr.ndim > len(shape):
            raise ValueError
    except ValueError:
        raise CompileError([Problem(g.source, None, None,
                                    f"the reference array of shape {arr.shape} does not broadcast to input "
                                    f"'{x}' of shape {shape}",
                                    "pass an array of the input's shape without the batch axis, or a scalar")]) from None
    return b.const(arr)
