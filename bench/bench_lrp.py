#!/usr/bin/env python3
"""Cost of onnxplain's compiled LRP composites versus ONNX Runtime's forward pass and versus Zennit.

Run with the reference virtual environment (torch, torchvision, zennit, onnxruntime)::

    /work/venv-ref/bin/pip install --no-deps -e .     # once, from the repository root
    /work/venv-ref/bin/python bench/bench_lrp.py

For VGG16 and ResNet-50 (torchvision, random seeded weights, BatchNorm calibrated on random inputs,
legacy exporter, opset 17, dynamic batch: exactly as ``bench/bench_gradient.py``) it measures on the
same machine and the same input (batch 8, 3x224x224, seed 0), 2 threads everywhere
(``torch.set_num_threads(2)``, ONNX Runtime ``intra_op_num_threads=2``), every measurement in a
fresh subprocess:

* ``forward``: ONNX Runtime's plain forward pass of the exported model;
* ``lrp.epsilon_plus_flat`` and ``lrp.epsilon_gamma_box`` (low=-3, high=3): the compiled model, one
  model per method (logits and the map of each sample's top class; ``target`` not fed);
* Zennit 0.5.1's ``EpsilonPlusFlat`` and ``EpsilonGammaBox`` (low/high: tensors of -3/+3 of the input's
  shape) with ``VGGCanonizer`` / ``ResNetCanonizer``, parameters frozen (``requires_grad_(False)``),
  eval mode, input requiring grad, the composite registered once (``with Gradient(...)``), relevance
  seeded with one-hot(argmax);
* ratios onnxplain / ORT forward and Zennit / onnxplain;
* onnxplain's compile time (median of 3, ``onnx.load`` excluded) and the compiled file size;
* peak memory of each measuring process: ``VmHWM`` (/proc/self/status) and ``ru_maxrss``
  (``getrusage(RUSAGE_SELF)``). The parent never imports torch or onnxruntime (the export runs in a
  child too), so ``ru_maxrss``, which Linux carries across fork + exec, is not inflated by the parent;
* an ONNX Runtime profile (``SessionOptions.enable_profiling``) of the compiled
  ``lrp.epsilon_plus_flat`` models: kernel time per op type, split into forward nodes, added nodes and
  ORT layout reorders (``bench_gradient.child_profile``).

Timings: ``time.perf_counter`` around one call, 1 warm-up call, then the median of ``--runs`` calls
(ONNX Runtime, default 5) or ``--zennit-runs`` calls (Zennit, default 3). The 1/5/15-minute load
averages are recorded before and after every measurement. Results:
``bench/results/bench_lrp.{json,md}``; the ONNX files go to a temporary directory.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_gradient as bg  # noqa: E402  (children and conventions reused, not modified)
import common  # noqa: E402

JSON_PATH = os.path.join(common.RESULTS, "bench_lrp.json")
MD_PATH = os.path.join(common.RESULTS, "bench_lrp.md")
DEFAULT_ARCHS = ("vgg16", "resnet50")
METHODS = ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box")
ZENNIT = {"lrp.epsilon_plus_flat": "EpsilonPlusFlat", "lrp.epsilon_gamma_box": "EpsilonGammaBox"}
BOX = {"low": -3.0, "high": 3.0}
TARGETS = {"ratio_vs_forward": 3.5, "zennit_speedup": {"lrp.epsilon_plus_flat": 3.0, "lrp.epsilon_gamma_box": 6.0},
           "memory_vs_forward": 3.0}


def rusage_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def method_params(method: str) -> dict:
    return dict(BOX) if method == "lrp.epsilon_gamma_box" else {}


# ----------------------------------------------------------------------------
# Children (each prints one JSON line)
# ----------------------------------------------------------------------------

def child_prepare(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    return bg.prepare(spec["arch"], spec["workdir"])


def child_compile(spec: dict) -> dict:
    """Median of ``repeats`` compiles of one method (load and copies excluded); saves the last result."""
    import onnx

    import onnxplain

    t0 = time.perf_counter()
    proto = onnx.load(spec["model"])
    load_s = time.perf_counter() - t0
    times, compiled = [], None
    for _ in range(spec["repeats"]):
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        compiled = None
        t0 = time.perf_counter()
        compiled = onnxplain.compile(copy, [spec["method"]], **method_params(spec["method"]))
        times.append(time.perf_counter() - t0)
    onnx.save(compiled, spec["out"])
    return {"times_s": times, "median_s": statistics.median(times), "load_s": load_s,
            "maxrss_mib": bg.maxrss_mib(), "ru_maxrss_mib": rusage_mib(),
            "nodes_in": len(proto.graph.node), "nodes_out": len(compiled.graph.node),
            "initializer_bytes_in": sum(t.ByteSize() for t in proto.graph.initializer),
            "initializer_bytes_out": sum(t.ByteSize() for t in compiled.graph.initializer)}


def child_ort(spec: dict) -> dict:
    res = bg.child_ort(spec)
    res["ru_maxrss_mib"] = rusage_mib()
    return res


def child_zennit(spec: dict) -> dict:
    """Zennit composite on the torch model (float32, CPU): median of ``runs`` attributions after a warm-up."""
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = common.build(spec["arch"])
    model.load_state_dict(torch.load(spec["state"], weights_only=True))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.from_numpy(bg.make_input(spec["batch"]))
    canon = [VGGCanonizer()] if spec["arch"].startswith("vgg") else [ResNetCanonizer()]
    if spec["composite"] == "EpsilonGammaBox":
        composite = EpsilonGammaBox(low=torch.full_like(x, BOX["low"]), high=torch.full_like(x, BOX["high"]),
                                    canonizers=canon)
    else:
        composite = EpsilonPlusFlat(canonizers=canon)

    def seed(out):
        return torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

    times = []
    with Gradient(model=model, composite=composite) as attributor:
        def call():
            xr = x.clone().requires_grad_(True)
            return attributor(xr, seed)

        call()  # warm-up
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            out, rel = call()
            times.append(time.perf_counter() - t0)
    return {"times_s": times, "median_s": statistics.median(times), "maxrss_mib": bg.maxrss_mib(),
            "ru_maxrss_mib": rusage_mib(), "finite": bool(torch.isfinite(rel).all())}


def child_pair(spec: dict) -> dict:
    """Forward and compiled model in one process, runs interleaved (robust ratio under fluctuating load)."""
    x = bg.make_input(spec["batch"])
    fwd = common.ort_session(spec["forward"], spec["threads"])
    exp = common.ort_session(spec["model"], spec["threads"])
    feeds = {fwd.get_inputs()[0].name: x}
    fwd.run(None, feeds)
    exp.run(None, feeds)
    tf, te = [], []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        fwd.run(None, feeds)
        tf.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        exp.run(None, feeds)
        te.append(time.perf_counter() - t0)
    return {"forward_times_s": tf, "times_s": te, "forward_median_s": statistics.median(tf),
            "median_s": statistics.median(te), "ratio": statistics.median(te) / statistics.median(tf)}


def wait_idle(max_wait: float, threshold: float) -> dict:
    """Wait (at most ``max_wait`` s) until the 1-minute load average drops below ``threshold``."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= threshold and time.perf_counter() - t0 < max_wait:
        time.sleep(10)
    return {"waited_s": round(time.perf_counter() - t0), "loadavg": list(os.getloadavg())}


def child_baseline(spec: dict) -> dict:
    res = bg.child_baseline(spec)
    res["ru_maxrss_mib"] = rusage_mib()
    return res


CHILDREN = {"prepare": child_prepare, "compile": child_compile, "ort": child_ort, "zennit": child_zennit,
            "profile": bg.child_profile, "baseline": child_baseline,
            "pair": child_pair}


def cpu_busy_s() -> float:
    """CPU seconds spent busy (all CPUs, all processes) since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, window: float = 3.0, max_busy: float = 0.1) -> float:
    """Wait (at most ``max_wait`` s) until the whole machine is at most ``max_busy`` busy over ``window`` s."""
    t0 = time.perf_counter()
    while True:
        b0 = cpu_busy_s()
        time.sleep(window)
        frac = (cpu_busy_s() - b0) / (window * os.cpu_count())
        if frac <= max_busy or time.perf_counter() - t0 > max_wait:
            return frac


QUIET = {"max_wait": 0.0, "attempts": 1, "max_foreign": 0.1}  # set from the command line


def run_child(spec: dict, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter, on a quiet machine.

    Before the child, wait until the machine is idle (``--quiet-wait``); during it, compare the CPU time
    the whole machine spent with the child's own: ``foreign_cpu_frac`` is the share of all CPUs used by
    other processes while it ran. A timing child with more than ``--max-foreign`` is repeated (up to
    ``--attempts`` times); every attempt's figure is kept.
    """
    tries = []
    for _ in range(max(1, QUIET["attempts"] if spec["mode"] in ("ort", "pair", "zennit", "compile") else 1)):
        idle = wait_quiet(QUIET["max_wait"]) if QUIET["max_wait"] > 0 else None
        res = _run_child_once(spec, timeout)
        res["idle_before"] = idle
        tries.append(res.get("foreign_cpu_frac"))
        if res.get("error") or (res.get("foreign_cpu_frac") or 0) <= QUIET["max_foreign"]:
            break
    res["foreign_cpu_frac_attempts"] = tries
    return res


def _run_child_once(spec: dict, timeout: float) -> dict:
    load0 = os.getloadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, wall0 = cpu_busy_s(), time.perf_counter()
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout", "load_before": load0, "load_after": os.getloadavg()}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        res = {"error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    else:
        res = json.loads(lines[-1])
    res["load_before"], res["load_after"] = list(load0), list(os.getloadavg())
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    wall = time.perf_counter() - wall0
    res["foreign_cpu_frac"] = max(0.0, (cpu_busy_s() - busy0 - own) / (wall * os.cpu_count()))
    return res


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def bench_arch(arch: str, args, workdir: str) -> dict:
    print(f"=== {arch}: export", flush=True)
    info = run_child({"mode": "prepare", "arch": arch, "workdir": workdir, "threads": args.threads})
    res = {"arch": arch, "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "prepare": {k: v for k, v in info.items() if k not in ("path", "state")}}
    if "error" in info:
        print(info["error"], file=sys.stderr)
        return res
    ort_spec = {"batch": args.batch, "threads": args.threads, "runs": args.runs}
    res["original_bytes"] = common.file_bytes(info["path"])
    res["idle_wait"] = wait_idle(args.wait_idle, args.idle_load)
    print(f"=== {arch}: forward (load {res['idle_wait']['loadavg'][0]:.2f})", flush=True)
    res["forward"] = run_child({"mode": "ort", "model": info["path"], **ort_spec})
    for method in METHODS:
        out = os.path.join(workdir, f"{arch}_{method}.onnx")
        print(f"=== {arch}: {method} compile", flush=True)
        m = res.setdefault(method, {})
        m["compile"] = run_child({"mode": "compile", "model": info["path"], "out": out, "method": method,
                                  "repeats": args.compile_repeats})
        if "error" in m["compile"]:
            print(m["compile"]["error"], file=sys.stderr)
            continue
        m["compiled_bytes"] = common.file_bytes(out)
        print(f"=== {arch}: {method} run", flush=True)
        m["onnxplain"] = run_child({"mode": "ort", "model": out, **ort_spec})
        m["pair"] = run_child({"mode": "pair", "forward": info["path"], "model": out, **ort_spec})
        print(f"=== {arch}: {method} zennit", flush=True)
        m["zennit"] = run_child({"mode": "zennit", "arch": arch, "state": info["state"], "composite": ZENNIT[method],
                                 "batch": args.batch, "threads": args.threads, "runs": args.zennit_runs})
        f, o, z = res["forward"].get("median_s"), m["onnxplain"].get("median_s"), m["zennit"].get("median_s")
        if f and o:
            m["ratio_vs_forward"] = o / f
        if z and o:
            m["zennit_speedup"] = z / o
        fm, om = res["forward"].get("maxrss_mib"), m["onnxplain"].get("maxrss_mib")
        if fm and om:
            m["memory_vs_forward"] = om / fm
        if args.profile and method == "lrp.epsilon_plus_flat":
            print(f"=== {arch}: {method} profile", flush=True)
            prof = {"batch": args.batch, "threads": args.threads, "runs": args.profile_runs,
                    "original": info["path"]}
            res["profile"] = run_child({"mode": "profile", "model": out,
                                        "prefix": os.path.join(workdir, f"{arch}_lrp"), **prof})
            res["profile_forward"] = run_child({"mode": "profile", "model": info["path"],
                                                "prefix": os.path.join(workdir, f"{arch}_fwd"), **prof})
        if not args.keep:
            os.remove(out)
    for fname in os.listdir(workdir):
        if fname.endswith(".json") or (not args.keep and fname.startswith(arch)):
            os.remove(os.path.join(workdir, fname))
    return res


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def verdict(value, limit, higher_is_better=False) -> str:
    if value is None:
        return "–"
    ok = value >= limit if higher_is_better else value <= limit
    return f"{value:.2f} ({'ok' if ok else '**miss**'})"


def markdown(data: dict) -> str:
    meta, rows = data["meta"], data["results"]
    out = [
        "# onnxplain LRP composites: cost versus the forward pass and versus Zennit",
        "",
        f"Generated by `bench/bench_lrp.py` on {meta['date']} ({meta['machine']}; onnxruntime {meta['onnxruntime']}, "
        f"onnx {meta['onnx']}, torch {meta['torch']}, zennit {meta['zennit']}, onnxplain {meta['onnxplain']} at "
        f"{meta.get('git', '?')}). Batch {meta['batch']}, 3×224×224 float32 (seed 0), {meta['threads']} threads "
        f"(ONNX Runtime intra-op, torch.set_num_threads), median of {meta['runs']} (ORT) / {meta['zennit_runs']} "
        "(Zennit) runs after 1 warm-up, each measurement in a fresh process. Models: torchvision, random seeded "
        "weights, BatchNorm calibrated, legacy exporter (opset 17, dynamic batch). Each method is compiled into "
        "its own model; `target` not fed (top class).",
        "",
        f"Load average (1/5/15 min) at the start: {fmt_load(meta.get('load_start'))}; at the end: "
        f"{fmt_load(meta.get('load_end'))}; highest 1-min load seen before/after a measurement: "
        f"{meta.get('load_max_1min', float('nan')):.2f}. Every measurement waited for a machine at most 10% busy "
        "(3-s window of /proc/stat) and was repeated (up to 3 attempts) when other processes used more than "
        f"{meta.get('max_foreign', 0.1):.0%} of the CPUs while it ran (share per attempt in the raw timings).",
        "",
        "| model | method | ORT forward s | onnxplain s | onnxplain / forward (target ≤ 3.5) "
        "| interleaved: forward s, onnxplain s, ratio | Zennit s "
        "| Zennit / onnxplain (target ≥ 3 eps-z+-flat, ≥ 6 eps-γ-box) | compile s | compiled MB (original) "
        "| peak RSS forward MiB | peak RSS onnxplain MiB | memory / forward (target ≤ 3) | peak RSS Zennit MiB "
        "| peak RSS compile MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f = r.get("forward", {})
        for method in METHODS:
            m = r.get(method, {})
            c, o, z = m.get("compile", {}), m.get("onnxplain", {}), m.get("zennit", {})
            out.append(
                f"| {r['arch']} | {method} | {fmt(f.get('median_s'))} | {fmt(o.get('median_s'))} "
                f"| {verdict(m.get('ratio_vs_forward'), TARGETS['ratio_vs_forward'])} "
                f"| {fmt(m.get('pair', {}).get('forward_median_s'))}, {fmt(m.get('pair', {}).get('median_s'))}, "
                f"{fmt(m.get('pair', {}).get('ratio'), '.2f')} | {fmt(z.get('median_s'))} "
                f"| {verdict(m.get('zennit_speedup'), TARGETS['zennit_speedup'][method], True)} "
                f"| {fmt(c.get('median_s'), '.2f')} "
                f"| {fmt(m.get('compiled_bytes', 0) / 1e6, '.0f')} ({fmt(r.get('original_bytes', 0) / 1e6, '.0f')}) "
                f"| {fmt(f.get('maxrss_mib'), '.0f')} | {fmt(o.get('maxrss_mib'), '.0f')} "
                f"| {verdict(m.get('memory_vs_forward'), TARGETS['memory_vs_forward'])} "
                f"| {fmt(z.get('maxrss_mib'), '.0f')} | {fmt(c.get('maxrss_mib'), '.0f')} |")
    out += ["", f"Baseline peak RSS (python + onnxruntime + numpy + input, no session): "
            f"{fmt(meta.get('baseline_maxrss_mib'), '.0f')} MiB (included in every peak above). Peak RSS is "
            "`VmHWM`; `ru_maxrss` of the same processes is in the JSON (equal up to rounding: the parent "
            "never loads torch/onnxruntime).", "",
            "Raw timings (s):", ""]
    for r in rows:
        f = r.get("forward", {})
        iw = r.get("idle_wait", {})
        out.append(f"- {r['arch']} (measured from {r.get('date', '?')}; waited {iw.get('waited_s', '–')} s for "
                   f"idle, load then {fmt_load(iw.get('loadavg'))}) forward: "
                   f"{[round(v, 3) for v in f.get('times_s', [])]}"
                   f" (load before/after {fmt_load(f.get('load_before'))} / {fmt_load(f.get('load_after'))}; other "
                   f"processes' CPU share per attempt {fmt_frac(f)})")
        for method in METHODS:
            m = r.get(method, {})
            for key in ("onnxplain", "pair", "zennit", "compile"):
                d = m.get(key, {})
                if d.get("error"):
                    out.append(f"  - {method} {key} ERROR: `{d['error'][-400:]}`")
                elif d:
                    out.append(f"  - {method} {key}: {[round(v, 3) for v in d.get('times_s', [])]} (load "
                               f"{fmt_load(d.get('load_before'))} / {fmt_load(d.get('load_after'))}; other "
                               f"processes' CPU share per attempt {fmt_frac(d)})")
    out += ["", "## ONNX Runtime profile of the compiled `lrp.epsilon_plus_flat` models", "",
            f"`SessionOptions.enable_profiling = True`, {meta['profile_runs']} runs after 1 warm-up (not counted). "
            "Kernel time per run summed per op type (ORT names fused kernels by their fused type, e.g. "
            "`FusedConv`). *forward*: the original model's nodes; *added*: nodes onnxplain emitted (target "
            "head, modified forward copies, backward pass); *layout*: ORT's NCHWc `ReorderInput`/`ReorderOutput`.",
            ""]
    for r in rows:
        p, pf = r.get("profile", {}), r.get("profile_forward", {})
        if "by_op" not in p:
            if p.get("error"):
                out.append(f"{r['arch']}: profile ERROR `{p['error'][-300:]}`")
            continue
        parts = p["by_part_ms_per_run"]
        out += [f"### {r['arch']}", "",
                f"Kernel time per run: {p['kernel_ms_per_run']:.0f} ms (forward nodes {parts.get('forward', 0):.0f} ms, "
                f"added nodes {parts.get('added', 0):.0f} ms, layout reorders {parts.get('layout', 0):.0f} ms); "
                f"plain model {pf.get('kernel_ms_per_run', float('nan')):.0f} ms.", "",
                "| rank | op type | ms per run | share | kernel calls per run |", "|---|---|---|---|---|"]
        for i, row in enumerate(p["by_op"][:12], 1):
            out.append(f"| {i} | {row['op']} | {row['ms_per_run']:.1f} | {100 * row['share']:.1f}% "
                       f"| {row['calls_per_run']:.0f} |")
        if "by_op" in pf:
            out += ["", "Plain model: " + ", ".join(f"{row['op']} {row['ms_per_run']:.0f} ms"
                                                    for row in pf["by_op"][:6]) + "."]
        out += ["", "Most expensive nodes:", "", "| node | op | part | ms per run | share |", "|---|---|---|---|---|"]
        for row in p["top_nodes"][:12]:
            out.append(f"| `{row['node']}` | {row['op']} | {row['part']} | {row['ms_per_run']:.1f} "
                       f"| {100 * row['share']:.1f}% |")
        out.append("")
    if meta.get("commentary"):
        out += ["## Reading", "", meta["commentary"], ""]
    return "\n".join(out) + "\n"


def fmt_frac(d: dict) -> str:
    return ", ".join("–" if v is None else f"{v:.2f}" for v in d.get("foreign_cpu_frac_attempts", [])) or "–"


def fmt_load(v) -> str:
    return "–" if not v else "/".join(f"{x:.2f}" for x in v)


def versions() -> dict:
    """Versions, read in a child so that the parent stays free of torch/onnxruntime."""
    code = ("import json, importlib.metadata as m; print(json.dumps({k: m.version(k) for k in "
            "('onnxruntime', 'onnx', 'torch', 'zennit', 'onnxplain')}))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(common.ARCHS), help="repeatable; default: vgg16, resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5, help="timed ORT runs after one warm-up (>= 3)")
    ap.add_argument("--zennit-runs", type=int, default=3, help="timed Zennit runs after one warm-up (>= 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile-repeats", type=int, default=3)
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--wait-idle", type=float, default=300,
                    help="before each architecture's timings, wait up to this many seconds for a low load")
    ap.add_argument("--idle-load", type=float, default=0.6, help="1-minute load average counted as idle")
    ap.add_argument("--quiet-wait", type=float, default=600,
                    help="before every measurement, wait up to this many seconds for a machine <= 10%% busy")
    ap.add_argument("--attempts", type=int, default=3,
                    help="repeat a timing measurement during which other processes used more than --max-foreign")
    ap.add_argument("--max-foreign", type=float, default=0.1,
                    help="largest share of all CPUs that other processes may use during a timing measurement")
    ap.add_argument("--workdir")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default=JSON_PATH)
    ap.add_argument("--md", default=MD_PATH)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other architectures' results already in --json (rerun one architecture)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["mode"]](spec)), flush=True)
        return 0
    QUIET.update(max_wait=args.quiet_wait, attempts=args.attempts, max_foreign=args.max_foreign)
    max_foreign = args.max_foreign
    workdir = args.workdir or tempfile.mkdtemp(prefix="onnxplain-bench-lrp-")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "batch": args.batch, "threads": args.threads,
            "runs": args.runs, "zennit_runs": args.zennit_runs, "profile_runs": args.profile_runs,
            "compile_repeats": args.compile_repeats, "load_start": list(os.getloadavg()),
            "max_foreign": max_foreign, "attempts": args.attempts, "quiet_wait": args.quiet_wait}
    meta.update(versions())
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if cpu:
            meta["machine"] += f", {cpu[0]}"
    except OSError:
        pass
    try:
        repo = os.path.dirname(HERE)
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = [ln[3:] for ln in subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                                                 capture_output=True, text=True).stdout.split("\n") if ln.strip()]
        meta["git"] = head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    except OSError:
        pass
    base = run_child({"mode": "baseline", "batch": args.batch})
    meta["baseline_maxrss_mib"] = base.get("maxrss_mib")
    meta["baseline_ru_maxrss_mib"] = base.get("ru_maxrss_mib")
    data = {"meta": meta, "results": []}
    archs = args.arch or list(DEFAULT_ARCHS)
    if args.merge and os.path.exists(args.json):
        with open(args.json) as fh:
            old = json.load(fh)
        data["results"] = [r for r in old["results"] if r["arch"] not in archs]
        meta["merged_from"] = {r["arch"]: old["meta"] for r in data["results"]}
        meta["commentary"] = old["meta"].get("commentary")
    try:
        for arch in archs:
            data["results"].append(bench_arch(arch, args, workdir))
            order = list(DEFAULT_ARCHS) + sorted(common.ARCHS)
            data["results"].sort(key=lambda r: order.index(r["arch"]))
            loads = [v for r in data["results"] for d in walk(r) for k in ("load_before", "load_after")
                     if isinstance(d, dict) and d.get(k) for v in [d[k][0]]]
            meta["load_max_1min"] = max(loads) if loads else float("nan")
            meta["load_end"] = list(os.getloadavg())
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=1)
            with open(args.md, "w") as fh:
                fh.write(markdown(data))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(data))
    print(f"wrote {args.json} and {args.md}")
    return 0


def walk(obj):
    """Every dict inside ``obj`` (itself included)."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


if __name__ == "__main__":
    sys.exit(main())
