#!/usr/bin/env python3
"""Measuring process of ``bench/run_all.py``: runs a list of jobs and prints one JSON line per job.

A job is ``{"engine": "ort" | "onnxplain" | "zennit" | "captum", "method": ..., "precision": ...}``;
the spec around it names the model, batch, device, threads and budget. The driver starts one such
process per job (CPU: the peak RSS is then the job's own) or per engine (CUDA: the CUDA context and
imports are paid once). Results stream out line by line, so a process killed at the deadline still
leaves the jobs it finished. Nothing here is imported by the package.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import numpy as np  # noqa: E402

#: The benchmarked methods, in the order they run, with their compile parameters.
METHODS = {
    "lrp.epsilon_plus_flat": {},
    "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "gradient": {},
    "integrated_gradients": {"steps": 32, "riemann": "right", "reference": "zeros"},
    "smoothgrad": {"samples": 16, "noise_scale": 0.1},
    "guided_backprop": {},
    "lrp.epsilon": {},
    "deep_taylor": {},
}
POINTS = {"integrated_gradients": 32, "smoothgrad": 16}  # points per sample: chunked by --chunk-images


def chunk_for(method: str, batch: int, chunk_images: int) -> int:
    """Points per expansion so that one expanded batch holds at most ``chunk_images`` images."""
    return max(1, min(POINTS.get(method, 1), chunk_images // max(batch, 1)))


def compile_params(method: str, batch: int, chunk_images: int) -> dict:
    params = dict(METHODS[method])
    if method in POINTS:
        params["chunk"] = chunk_for(method, batch, chunk_images)
    return params


class Memory:
    """Peak memory of one job: host RSS since a reset (``VmHWM``) and, on CUDA, device memory (NVML).

    GPU: ``nvmlDeviceGetMemoryInfo(...).used`` sampled every 2 ms in a thread from before the session (or
    torch model) is created until the timed runs end; reported as the peak above the level just before
    (``gpu_delta_mib``: weights, activations, workspaces and allocator caches of this job; the CUDA context
    exists before). Whole-device figures: nothing else runs on the benchmark GPU.
    """

    def __init__(self, cuda: bool):
        common.release_memory()
        self.base_rss = common.rss_mib()
        common.reset_peak_rss()
        self.cuda, self.nvml, self.peak, self.stop_flag = cuda, None, 0, False
        if cuda:
            try:
                import pynvml

                pynvml.nvmlInit()
                self.nvml = pynvml
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("BENCH_GPU_INDEX", "0")))
                self.base_gpu = self._used()
                self.peak = self.base_gpu
                self.thread = threading.Thread(target=self._poll, daemon=True)
                self.thread.start()
            except Exception as exc:  # noqa: BLE001 - memory is reported as missing, timings go on
                self.nvml_error = repr(exc)

    def _used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def _poll(self):
        while not self.stop_flag:
            self.peak = max(self.peak, self._used())
            time.sleep(0.002)

    def result(self) -> dict:
        out = {"peak_rss_mib": common.maxrss_mib(), "base_rss_mib": self.base_rss}
        out["rss_delta_mib"] = out["peak_rss_mib"] - self.base_rss
        if self.nvml is not None:
            self.stop_flag = True
            self.thread.join()
            self.peak = max(self.peak, self._used())
            out["gpu_peak_mib"] = self.peak / 2 ** 20
            out["gpu_delta_mib"] = (self.peak - self.base_gpu) / 2 ** 20
        elif self.cuda:
            out["gpu_memory_error"] = getattr(self, "nvml_error", "nvml unavailable")
        return out


def time_calls(fn, spec: dict, sync=None) -> dict:
    """1 warm-up call, then up to ``repeats`` timed calls; stop early after ``max_job_s`` (>= ``min_repeats``
    calls) or at the deadline (>= 1 call)."""
    fn()
    if sync:
        sync()
    times, t_start = [], time.perf_counter()
    while len(times) < spec["repeats"]:
        t0 = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
        spent = time.perf_counter() - t_start
        if len(times) >= spec["min_repeats"] and spent > spec["max_job_s"]:
            break
        if time.time() + statistics.median(times) > spec["deadline"]:
            break
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times), "n": len(times),
            "last": out}


# ----------------------------------------------------------------------------
# ONNX Runtime jobs (forward pass and compiled methods)
# ----------------------------------------------------------------------------

def ort_job(job: dict, spec: dict, x, state: dict) -> dict:
    import onnx

    import onnxplain
    from onnxplain.runtime.session import make_session, providers_for

    res = {}
    path = spec["onnx"]
    if job["engine"] == "onnxplain":
        proto = onnx.load(path)
        params = compile_params(job["method"], spec["batch"], spec["chunk_images"])
        res["params"] = params
        common.reset_peak_rss()
        times = []
        for _ in range(max(1, spec["compile_repeats"])):
            copy = onnx.ModelProto()
            copy.CopyFrom(proto)
            t0 = time.perf_counter()
            compiled = onnxplain.compile(copy, [job["method"]], precision=job.get("precision", "float32"), **params)
            times.append(time.perf_counter() - t0)
        res.update(compile_times_s=times, compile_s=statistics.median(times), compile_peak_rss_mib=common.maxrss_mib())
        if spec["device"] == "cuda":  # device memory is measured (NVML): skip the file round trip
            path = compiled.SerializeToString()
            res["compiled_bytes"] = len(path)
        else:  # host memory is measured: the session reads the file, as the forward pass's does
            path = os.path.join(spec["workdir"], f"{spec['model']}_{job['method']}_{job.get('precision', 'float32')}.onnx")
            onnx.save(compiled, path)
            res["compiled_bytes"] = os.path.getsize(path)
        del proto, copy, compiled
    mem = Memory(spec["device"] == "cuda")
    t0 = time.perf_counter()
    sess = make_session(path, providers_for(spec["device"]), spec["threads"])
    res["session_s"] = time.perf_counter() - t0
    res["providers"] = sess.get_providers()
    if spec["device"] == "cuda" and "CUDAExecutionProvider" not in res["providers"]:
        raise RuntimeError(f"the session fell back to {res['providers']}: CUDA provider not usable")
    if job["engine"] == "onnxplain" and isinstance(path, str):
        os.remove(path)
    path = None
    name = sess.get_inputs()[0].name
    if spec["device"] == "cuda":
        import onnxruntime as ort

        from onnxplain.runtime import device

        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)  # device-resident input, bound by pointer
        res["io_binding"] = True

        def call():
            return device.bind_run(sess, {name: x_dev}, ("cuda", 0))  # outputs stay on the GPU
        res["cuda_options"] = sess.get_provider_options().get("CUDAExecutionProvider", {})
    else:
        def call():
            return sess.run(None, {name: x})
    timing = time_calls(call, spec)
    res.update(mem.result())
    outs = [o.numpy() if hasattr(o, "numpy") else o for o in timing.pop("last")]  # host copies, after timing
    res["finite"] = bool(np.isfinite(outs[-1]).all())
    res.update(timing)
    if job["engine"] == "onnxplain" and spec["device"] == "cpu" and spec.get("paired_rounds"):
        res["paired"] = paired_with_forward(call, spec, name, x, timing["median_s"])
    if job["engine"] == "onnxplain":
        _compare_precisions(job, outs, state, res)
    return res


def paired_with_forward(call, spec: dict, name: str, x, median_s: float) -> Optional[dict]:
    """Alternate ``call`` with the plain forward pass (a second session, created after the memory was
    measured) for ``paired_rounds`` rounds: the ratio of each round's two times, under the same load.

    Skipped (None) for calls over 15 s (IG, SmoothGrad on big models) or when the deadline is near.
    """
    from onnxplain.runtime.session import make_session, providers_for

    rounds = spec["paired_rounds"]
    if median_s > 15.0 or time.time() + rounds * 1.5 * median_s > spec["deadline"]:
        return None
    fwd = make_session(spec["onnx"], providers_for("cpu"), spec["threads"])
    fwd.run(None, {name: x})
    f_s, m_s = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fwd.run(None, {name: x})
        f_s.append(time.perf_counter() - t0)
        time.sleep(0.05)  # each session has its own thread pool, whose threads spin for a while after a run
        t0 = time.perf_counter()
        call()
        m_s.append(time.perf_counter() - t0)
        time.sleep(0.05)
    ratios = [m / f for m, f in zip(m_s, f_s)]
    return {"forward_s": f_s, "method_s": m_s, "ratio_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median(m_s) / statistics.median(f_s)}


def _compare_precisions(job: dict, outs: list, state: dict, res: dict) -> None:
    """Float16 maps against the float32 maps of the same process (same input): per-sample relative L2 error.

    The compiled models pick each sample's top class themselves; samples whose float16 top class differs
    from float32's (nearly tied logits) are counted and left out of the error.
    """
    key = ("outputs", job["method"])
    if job.get("precision", "float32") == "float32":
        state[key] = (outs[0], outs[-1])
        return
    if key not in state:
        return
    logits32, map32 = state[key]
    same = logits32.reshape(len(logits32), -1).argmax(1) == outs[0].reshape(len(outs[0]), -1).argmax(1)
    a = map32.reshape(len(map32), -1).astype(np.float64)
    b = outs[-1].reshape(len(map32), -1).astype(np.float64)
    err = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(a, axis=1), 1e-300)
    res["fp16_top_class_agree"] = float(same.mean())
    res["fp16_rel_err_vs_fp32"] = {"median": float(np.median(err[same])) if same.any() else None,
                                   "max": float(err[same].max()) if same.any() else None}
    res["fp16_logits_rel_err"] = float(np.linalg.norm(logits32 - outs[0]) / max(np.linalg.norm(logits32), 1e-300))


# ----------------------------------------------------------------------------
# PyTorch peers (Zennit, Captum)
# ----------------------------------------------------------------------------

def torch_job(job: dict, spec: dict, x, state: dict) -> dict:
    import torch

    import harness_peers

    cuda = spec["device"] == "cuda"
    dev = torch.device("cuda" if cuda else "cpu")
    mem = Memory(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if "model" not in state:  # built once per process, kept on the host between jobs
        model = common.build(spec["model"])
        model.load_state_dict(torch.load(spec["state"], weights_only=True))
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        state["model"] = model
    model = state["model"].to(dev)  # on CUDA: the weights count in this job's memory, as a session's do
    xd = torch.from_numpy(x).to(dev)
    params = compile_params(job["method"], spec["batch"], spec["chunk_images"])
    fn, note, close = harness_peers.make(job["engine"], job["method"], model, xd, spec["model"], params)
    sync = torch.cuda.synchronize if cuda else None
    try:
        timing = time_calls(fn, spec, sync)
    finally:
        close()
    rel = timing.pop("last")
    res = {"note": note, "finite": bool(torch.isfinite(rel).all())}
    res.update(mem.result())
    if cuda:
        res["torch_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        res["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    res.update(timing)
    del fn, rel, xd
    if cuda:
        model.to("cpu")
        torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------

def setup(spec: dict) -> None:
    if spec["device"] == "cuda":
        try:  # load the CUDA/cuDNN libraries that torch's wheels ship, for onnxruntime-gpu
            import torch

            torch.zeros(1, device="cuda")  # the CUDA context exists before any memory baseline
        except ImportError:
            pass
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
    else:
        try:
            import torch

            torch.set_num_threads(spec["threads"])
            torch.set_num_interop_threads(1)
        except (ImportError, RuntimeError):
            pass


def run(spec: dict) -> None:
    setup(spec)
    x = common.make_input(spec["batch"])
    state = {}
    for job in spec["jobs"]:
        head = {k: job.get(k) for k in ("engine", "method", "precision")}
        if time.time() > spec["deadline"] - spec["job_reserve_s"]:
            print(json.dumps({**head, "skipped": "budget"}), flush=True)
            continue
        t0 = time.perf_counter()
        try:
            if job["engine"] in ("ort", "onnxplain"):
                res = ort_job(job, spec, x, state)
            else:
                res = torch_job(job, spec, x, state)
        except Exception as exc:  # noqa: BLE001 - recorded, the next job runs
            import traceback

            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        res.update(head, wall_s=time.perf_counter() - t0)
        print(json.dumps(res, default=str), flush=True)
        common.release_memory()


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
