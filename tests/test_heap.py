"""Freed heap memory goes back to the operating system after a session is built (runtime/heap.py).

The reference is the kernel's own count of resident pages (``/proc/self/statm``): memory freed into
glibc's heap stays resident until ``malloc_trim`` returns it.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
from onnx import helper

from onnxplain.runtime import heap, session
from reference import make_model


def _resident_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def test_freed_heap_pages_leave_the_resident_set():
    trim = heap._malloc_trim()
    if trim is None:  # no glibc: nothing to call, and nothing is claimed
        assert heap.release_freed_heap() is False
        return
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 * 1024, 1600                    # 100 MiB in blocks below glibc's mmap threshold
    blocks = [libc.malloc(block) for _ in range(count)]
    pin = libc.malloc(block)                          # live block above them: free() cannot shrink the heap top
    for b in blocks:
        ctypes.memset(b, 1, block)                    # make every page resident
    for b in blocks:
        libc.free(b)
    before = _resident_mib()
    assert heap.release_freed_heap() is True
    after = _resident_mib()
    libc.free(pin)
    assert before - after > 0.8 * block * count / 2 ** 20, (before, after)


def test_make_session_releases_after_building(monkeypatch):
    calls = []
    monkeypatch.setattr(session, "release_freed_heap", lambda: calls.append(1) or True)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [1, 2])], [("y", [1, 3])],
                       {"w": w})
    sess = session.make_session(model, ["CPUExecutionProvider"], 1)
    x = np.array([[1.0, -2.0]], dtype=np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x.astype(np.float64) @ w, rtol=1e-6)
    assert calls == [1]
