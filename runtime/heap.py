"""Hand the heap memory freed while a session was built back to the operating system.

Building an ONNX Runtime session for a compiled model allocates and frees a lot of host memory: the
parsed model, the modified weights that ONNX Runtime's constant folding computes (``Relu(W)``,
transposed and flipped kernels) and the intermediate copies of its layout transformations. glibc's
``malloc`` keeps most of those freed blocks in the process (they sit between live blocks, or below its
trim threshold) and counts them in the resident set until something reuses them. The explanation
graph's first run then grows ONNX Runtime's arena with new pages on top of them. Measured on ResNet-50
(batch 8, ``lrp.epsilon_plus_flat``, ONNX Runtime 1.32): resident memory after building the session
560 MiB, 324 MiB after ``malloc_trim``; peak over the session and its runs 1037 → 824 MiB
(``docs/speed.md``).

:func:`release_freed_heap` calls glibc's ``malloc_trim(0)``, which returns every whole free page of
the heap to the kernel (``madvise(MADV_DONTNEED)`` inside the heap, ``sbrk`` at its top). It changes no
data and no live allocation; it costs a walk over the heap (milliseconds). Where the C library has no
``malloc_trim`` (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import functools
import sys


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    """glibc's ``malloc_trim`` as a ctypes function, or None where the process has none (looked up once)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed_heap() -> bool:
    """Return the free pages of the C heap to the operating system (glibc ``malloc_trim(0)``).

    Returns
    -------
    bool
        True when ``malloc_trim`` exists in this process (glibc) and was called; False elsewhere, where
        nothing is done.
    """
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
