#!/usr/bin/env python3
"""Cost of onnxplain's compiled ``gradient`` model versus the plain forward pass (ONNX Runtime CPU).

Run with the reference virtual environment (torch and torchvision export the models)::

    /work/venv-ref/bin/pip install --no-deps -e .     # once, from the repository root
    /work/venv-ref/bin/python bench/bench_gradient.py

For VGG16 and ResNet-50 (torchvision, random seeded weights, BatchNorm calibrated on random
inputs, legacy exporter, opset 17, dynamic batch) it measures on the same machine and the same
input (batch 8, 3x224x224, seed 0), every measurement in a fresh subprocess:

* ``forward``: ONNX Runtime's plain forward pass of the exported model;
* ``gradient``: the compiled ``onnxplain.compile(model, ["gradient"])`` model (logits and
  ``gradient/input`` of each sample's top class);
* the ratio gradient / forward (target: <= 2.5);
* onnxplain's compile time, median of 3, excluding ``onnx.load`` (target ResNet-50: <= 2 s);
* peak resident memory (``ru_maxrss`` of each measuring subprocess, which reports its own
  ``resource.getrusage(RUSAGE_SELF)``; a baseline process that only imports onnxruntime and
  builds the input is reported for reference);
* file sizes: the exported model and the compiled model saved with ``onnx.save`` (target: <= 10%
  larger);
* optionally PyTorch's own forward and input gradient (``--torch``, on by default);
* an ONNX Runtime profile (``SessionOptions.enable_profiling``) of the compiled model: the top 10
  op types by total kernel time, and the split between forward nodes (names of the original
  graph) and the nodes onnxplain added (backward pass and target head).

Timings: ``time.perf_counter`` around ``session.run``, 1 warm-up run, then the median of
``--runs`` runs (default 7). ONNX Runtime: CPU provider, ``intra_op_num_threads`` = ``--threads``
(default 2), one inter-op thread, default graph optimisations. Results go to
``bench/results/bench_gradient.{json,md}``; the ONNX files go to a temporary directory
(``--workdir`` to choose it, ``--keep`` to keep them).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

JSON_PATH = os.path.join(common.RESULTS, "bench_gradient.json")
MD_PATH = os.path.join(common.RESULTS, "bench_gradient.md")
DEFAULT_ARCHS = ("vgg16", "resnet50")


make_input = common.make_input  # shared with bench_lrp.py and run_all.py (bench/common.py)
maxrss_mib = common.maxrss_mib


# ----------------------------------------------------------------------------
# Children: each prints one JSON line on stdout
# ----------------------------------------------------------------------------

def child_baseline(spec: dict) -> dict:
    import onnxruntime  # noqa: F401

    make_input(spec["batch"])
    return {"maxrss_mib": maxrss_mib()}


def child_ort(spec: dict) -> dict:
    """Time session.run of a model (all outputs) after one warm-up."""
    x = make_input(spec["batch"])
    t0 = time.perf_counter()
    sess = common.ort_session(spec["model"], spec["threads"])
    create_s = time.perf_counter() - t0
    rss_after_create = maxrss_mib()
    feeds = {sess.get_inputs()[0].name: x}
    sess.run(None, feeds)  # warm-up
    times = []
    for _ in range(spec["runs"]):
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return {"times_s": times, "median_s": statistics.median(times), "session_create_s": create_s,
            "maxrss_after_create_mib": rss_after_create, "maxrss_mib": maxrss_mib(),
            "outputs": [o.name for o in sess.get_outputs()],
            "finite": bool(all(np.isfinite(o).all() for o in outs))}


def _cpu_busy() -> tuple:
    """(busy, total) jiffies of all CPUs from /proc/stat (for the machine-load indicator)."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals) - idle, sum(vals)
    except OSError:
        return 0, 0


def child_pair(spec: dict) -> dict:
    """Interleaved timing: forward, gradient, forward, gradient, ... in one process.

    Load that comes and goes (other processes on the machine) then hits both alike. For every
    run it also records this process's CPU time / (wall time x threads) ("own CPU share"): well
    below 1 means the run waited for a CPU that something else was using. ``machine_busy`` is the
    fraction of all CPUs busy during the timed loop (this process included), ``others_busy`` the
    fraction used by other processes.
    """
    x = make_input(spec["batch"])
    sessions = {"forward": common.ort_session(spec["forward"], spec["threads"]),
                "gradient": common.ort_session(spec["gradient"], spec["threads"])}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, sess in sessions.items():
        sess.run(None, feeds[k])  # warm-up
    times = {k: [] for k in sessions}
    share = {k: [] for k in sessions}
    b0, t0all = _cpu_busy()
    own0 = time.process_time()
    for _ in range(spec["runs"]):
        for k, sess in sessions.items():
            c0, t0 = time.process_time(), time.perf_counter()
            sess.run(None, feeds[k])
            wall = time.perf_counter() - t0
            times[k].append(wall)
            share[k].append((time.process_time() - c0) / (wall * spec["threads"]))
    b1, t1all = _cpu_busy()
    own = (time.process_time() - own0) * os.sysconf("SC_CLK_TCK")  # this process, in jiffies
    res = {k: {"times_s": v, "median_s": statistics.median(v), "min_s": min(v),
               "own_cpu_share": statistics.median(share[k])} for k, v in times.items()}
    res["machine_busy"] = (b1 - b0) / max(t1all - t0all, 1)
    res["others_busy"] = max(0.0, b1 - b0 - own) / max(t1all - t0all, 1)
    res["loadavg"] = os.getloadavg()
    return res


def child_compile(spec: dict) -> dict:
    """Median of ``repeats`` compiles (load and copies excluded); saves the last result."""
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
        compiled = onnxplain.compile(copy, ["gradient"])
        times.append(time.perf_counter() - t0)
    onnx.save(compiled, spec["out"])
    return {"times_s": times, "median_s": statistics.median(times), "load_s": load_s,
            "maxrss_mib": maxrss_mib(), "nodes_in": len(proto.graph.node),
            "nodes_out": len(compiled.graph.node),
            "initializers_in": len(proto.graph.initializer),
            "initializers_out": len(compiled.graph.initializer),
            "op_census_added": dict(collections.Counter(n.op_type for n in compiled.graph.node)
                                    - collections.Counter(n.op_type for n in proto.graph.node))}


def child_torch(spec: dict) -> dict:
    """PyTorch (float32, CPU) forward and input gradient of sum_n logits[n, argmax_n]."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = common.build(spec["arch"])
    model.load_state_dict(torch.load(spec["state"], weights_only=True))
    model.eval()
    x = torch.from_numpy(make_input(spec["batch"]))

    def forward():
        with torch.no_grad():
            return model(x)

    def gradient():
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        sel = out.gather(1, out.argmax(1, keepdim=True).detach()).sum()
        (g,) = torch.autograd.grad(sel, xr)
        return g

    res = {}
    for name, fn in (("forward", forward), ("gradient", gradient)):
        fn()
        times = []
        for _ in range(spec["runs"]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        res[name] = {"times_s": times, "median_s": statistics.median(times)}
    res["maxrss_mib"] = maxrss_mib()
    return res


def child_profile(spec: dict) -> dict:
    """ORT profile of ``runs`` runs after a warm-up: total kernel time per op type and per part."""
    import onnx

    proto = onnx.load(spec["original"], load_external_data=False)
    forward_names = {n.name for n in proto.graph.node}
    forward_outputs = {o for n in proto.graph.node for o in n.output}
    del proto

    def part_of(node: str, op: str) -> str:
        if op in ("ReorderInput", "ReorderOutput"):
            return "layout"  # ORT's NCHWc layout conversions
        if node in forward_names or (node.endswith("_nchwc") and node[:-6] in forward_outputs):
            return "forward"
        return "added"

    x = make_input(spec["batch"])
    sess = common.ort_session(spec["model"], spec["threads"], profile_prefix=spec["prefix"])
    feeds = {sess.get_inputs()[0].name: x}
    for _ in range(spec["runs"] + 1):
        sess.run(None, feeds)
    path = sess.end_profiling()
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    by_op, by_part, count = collections.Counter(), collections.Counter(), collections.Counter()
    by_node = collections.Counter()
    first_run_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if e["ts"] < first_run_end:  # skip the warm-up run
            continue
        op = e.get("args", {}).get("op_name", "?")
        node = e["name"][: -len("_kernel_time")]
        part = part_of(node, op)
        by_op[op] += e["dur"]
        count[op] += 1
        by_part[part] += e["dur"]
        by_node[(node, op, part)] += e["dur"]
    n = max(len(runs) - 1, 1)
    total = sum(by_op.values())
    top = [{"op": op, "ms_per_run": us / n / 1e3, "share": us / total, "calls_per_run": count[op] / n}
           for op, us in by_op.most_common()]
    nodes = [{"node": k[0], "op": k[1], "part": k[2], "ms_per_run": us / n / 1e3, "share": us / total}
             for k, us in by_node.most_common(15)]
    return {"runs_profiled": n, "kernel_ms_per_run": total / n / 1e3,
            "model_run_ms": [r["dur"] / 1e3 for r in runs[1:]],
            "by_op": top, "by_part_ms_per_run": {k: v / n / 1e3 for k, v in by_part.items()},
            "top_nodes": nodes}


CHILDREN = {"baseline": child_baseline, "ort": child_ort, "pair": child_pair, "compile": child_compile,
            "torch": child_torch, "profile": child_profile}


def run_child(spec: dict, timeout: float = 1800) -> dict:
    """Run one measurement in a fresh interpreter; return its JSON (or an ``error``)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-3000:]}"}
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------

def prepare(arch: str, workdir: str) -> dict:
    """Build, calibrate and export one architecture; save its state dict for the torch child."""
    return common.prepare(arch, workdir)


wait_idle = common.wait_idle


def bench_arch(arch: str, args, workdir: str) -> dict:
    print(f"=== {arch}: export", flush=True)
    info = prepare(arch, workdir)
    res = {"arch": arch, **{k: v for k, v in info.items() if k not in ("path", "state")}}
    compiled = os.path.join(workdir, f"{arch}_gradient.onnx")
    print(f"=== {arch}: compile x{args.compile_repeats}", flush=True)
    res["compile"] = run_child({"mode": "compile", "model": info["path"], "out": compiled,
                                "repeats": args.compile_repeats})
    if "error" in res["compile"]:
        print(res["compile"]["error"], file=sys.stderr)
        return res
    res["original_bytes"] = common.file_bytes(info["path"])
    res["compiled_bytes"] = common.file_bytes(compiled)
    res["size_increase"] = res["compiled_bytes"] / res["original_bytes"] - 1
    common_spec = {"batch": args.batch, "threads": args.threads, "runs": args.runs}
    print(f"=== {arch}: forward / gradient timings", flush=True)
    res["idle_wait"] = wait_idle(args.wait_idle)
    res["pair"] = run_child({"mode": "pair", "forward": info["path"], "gradient": compiled, **common_spec})
    res["forward"] = run_child({"mode": "ort", "model": info["path"], **common_spec})
    res["gradient"] = run_child({"mode": "ort", "model": compiled, **common_spec})
    pair = res["pair"]
    if "forward" in pair:
        res["ratio"] = pair["gradient"]["median_s"] / pair["forward"]["median_s"]
        res["ratio_min"] = pair["gradient"]["min_s"] / pair["forward"]["min_s"]
    if "median_s" in res["forward"] and "median_s" in res["gradient"]:
        res["ratio_separate"] = res["gradient"]["median_s"] / res["forward"]["median_s"]
    if args.torch:
        print(f"=== {arch}: torch", flush=True)
        res["torch"] = run_child({"mode": "torch", "arch": arch, "state": info["state"], **common_spec})
    if args.profile:
        print(f"=== {arch}: profiles", flush=True)
        prof = {"batch": args.batch, "threads": args.threads, "runs": args.profile_runs,
                "original": info["path"]}
        res["profile_gradient"] = run_child({"mode": "profile", "model": compiled,
                                             "prefix": os.path.join(workdir, f"{arch}_grad"), **prof})
        res["profile_forward"] = run_child({"mode": "profile", "model": info["path"],
                                            "prefix": os.path.join(workdir, f"{arch}_fwd"), **prof})
    for f in glob.glob(os.path.join(workdir, "*.json")):
        os.remove(f)
    return res


git_state = common.git_state


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def markdown(data: dict) -> str:
    meta, rows = data["meta"], data["results"]
    out = [
        "# onnxplain gradient: cost versus the plain forward pass",
        "",
        f"Generated by `bench/bench_gradient.py` on {meta['date']} ({meta['machine']}; onnxruntime "
        f"{meta['onnxruntime']}, onnx {meta['onnx']}, torch {meta['torch']}, onnxplain {meta['onnxplain']} at "
        f"{meta.get('git', '?')}). "
        f"Batch {meta['batch']}, 3×224×224 float32, ONNX Runtime CPU with {meta['threads']} intra-op threads, "
        f"median of {meta['runs']} runs after 1 warm-up, each measurement in a fresh process. "
        "Models: torchvision with random seeded weights, legacy exporter (opset 17, dynamic batch).",
        "",
        "| model | forward s | gradient s | ratio (≤ 2.5) | ratio of minima | own CPU share fwd / grad "
        "| compile s, median of 3 (ResNet-50 ≤ 2) "
        "| load s | original MB | compiled MB | size increase (≤ 10%) | peak RSS forward MiB "
        "| peak RSS gradient MiB | peak RSS compile MiB | torch forward s | torch gradient s | torch peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, g, c, t = r.get("forward", {}), r.get("gradient", {}), r.get("compile", {}), r.get("torch", {})
        pf, pg = r.get("pair", {}).get("forward", {}), r.get("pair", {}).get("gradient", {})
        out.append(
            f"| {r['arch']} | {fmt(pf.get('median_s'))} | {fmt(pg.get('median_s'))} | {fmt(r.get('ratio'), '.2f')} "
            f"| {fmt(r.get('ratio_min'), '.2f')} | {fmt(pf.get('own_cpu_share'), '.2f')} / "
            f"{fmt(pg.get('own_cpu_share'), '.2f')} "
            f"| {fmt(c.get('median_s'), '.2f')} | {fmt(c.get('load_s'), '.2f')} "
            f"| {fmt(r.get('original_bytes', 0) / 1e6, '.1f')} | {fmt(r.get('compiled_bytes', 0) / 1e6, '.1f')} "
            f"| {fmt(100 * r['size_increase'], '+.2f') + '%' if 'size_increase' in r else '–'} "
            f"| {fmt(f.get('maxrss_mib'), '.0f')} | {fmt(g.get('maxrss_mib'), '.0f')} "
            f"| {fmt(c.get('maxrss_mib'), '.0f')} | {fmt(t.get('forward', {}).get('median_s'))} "
            f"| {fmt(t.get('gradient', {}).get('median_s'))} | {fmt(t.get('maxrss_mib'), '.0f')} |")
    out += ["", f"Baseline peak RSS (python + onnxruntime + numpy + input, no session): "
            f"{fmt(meta.get('baseline_maxrss_mib'), '.0f')} MiB.", "",
            "Columns: *forward* — `session.run` of the exported model; *gradient* — `session.run` of the "
            "compiled model (logits and `gradient/input` for each sample's top class, `target` not fed); "
            "both timed in one process, interleaved (forward, gradient, forward, …) so that load from other "
            "processes hits both alike; *ratio* — of the medians; *ratio of minima* — of the fastest runs; "
            "*own CPU share* — median over runs of this process's CPU time / (wall time × threads): close to "
            "1 on an idle machine, lower when other processes competed for the CPUs; "
            "*compile* — `onnxplain.compile(proto, ['gradient'])` on an in-memory copy (file loading "
            "excluded, shown as *load*); *size* — files written by `onnx.save` (weights embedded); "
            "*peak RSS* — `VmHWM` (peak resident set) of the measuring process (includes the Python/ONNX Runtime baseline "
            "above and the session's copy of the weights); *torch* — PyTorch float32 CPU with the same "
            "thread count (`no_grad` forward; input gradient of the top logit sum).", ""]
    for r in rows:
        pr = r.get("pair", {})
        raw = [f"- {r['arch']}: interleaved forward runs (s) "
               f"{[round(v, 3) for v in pr.get('forward', {}).get('times_s', [])]}, gradient runs (s) "
               f"{[round(v, 3) for v in pr.get('gradient', {}).get('times_s', [])]}, CPUs used by other "
               f"processes during them {fmt(pr.get('others_busy'), '.2f')}, load average before the timings "
               f"{r.get('idle_wait', {}).get('loadavg')} (waited {r.get('idle_wait', {}).get('waited_s')} s); "
               f"separate-process medians (memory runs): forward {fmt(r.get('forward', {}).get('median_s'))} s, "
               f"gradient {fmt(r.get('gradient', {}).get('median_s'))} s (ratio {fmt(r.get('ratio_separate'), '.2f')}); "
               f"compile runs (s) {[round(v, 2) for v in r.get('compile', {}).get('times_s', [])]}; "
               f"nodes {r.get('compile', {}).get('nodes_in')} → {r.get('compile', {}).get('nodes_out')}, "
               f"initializers {r.get('compile', {}).get('initializers_in')} → "
               f"{r.get('compile', {}).get('initializers_out')}"]
        out += raw
        for key in ("pair", "forward", "gradient", "compile", "torch"):
            if r.get(key, {}).get("error"):
                out.append(f"  - {key} ERROR: `{r[key]['error'][-500:]}`")
    others = data.get("other_runs", [])
    if others:
        out += ["", "### Repeat runs (same script and machine; other jobs were running during some)", "",
                "| run | model | forward s | gradient s | ratio | ratio of minima | own CPU share fwd / grad "
                "| compile s |", "|---|---|---|---|---|---|---|---|"]
        for o in [{"date": meta["date"], "results": rows}] + others:
            for r in o["results"]:
                pf, pg = r.get("pair", {}).get("forward", {}), r.get("pair", {}).get("gradient", {})
                out.append(f"| {o['date']} | {r['arch']} | {fmt(pf.get('median_s'))} | {fmt(pg.get('median_s'))} "
                           f"| {fmt(r.get('ratio'), '.2f')} | {fmt(r.get('ratio_min'), '.2f')} "
                           f"| {fmt(pf.get('own_cpu_share'), '.2f')} / {fmt(pg.get('own_cpu_share'), '.2f')} "
                           f"| {fmt(r.get('compile', {}).get('median_s'), '.2f')} |")
    out += ["", "## ONNX Runtime profile of the compiled gradient model", "",
            f"`SessionOptions.enable_profiling = True`, {meta['profile_runs']} runs after 1 warm-up (not "
            "counted), same input and threads. Kernel time per run summed per op type (ORT names fused "
            "kernels by their fused type, e.g. `FusedConv`). *forward* nodes are the original model's "
            "(names kept by onnxplain, the forward MaxPool now also returns indices); *added* nodes are "
            "those onnxplain emitted (backward pass and target head); *layout* are ONNX Runtime's "
            "`ReorderInput`/`ReorderOutput` NCHWc conversions (ORT names NCHWc convolutions after their "
            "output, `<output>_nchwc`; they are attributed to the node producing that output).", ""]
    for r in rows:
        pg, pf = r.get("profile_gradient", {}), r.get("profile_forward", {})
        if "by_op" not in pg:
            if pg.get("error"):
                out.append(f"{r['arch']}: profile ERROR `{pg['error'][-300:]}`")
            continue
        parts = pg["by_part_ms_per_run"]
        fparts = pf.get("by_part_ms_per_run", {})
        out += [f"### {r['arch']}", "",
                f"Kernel time per run: compiled gradient model {pg['kernel_ms_per_run']:.0f} ms "
                f"(forward nodes {parts.get('forward', 0):.0f} ms, added nodes {parts.get('added', 0):.0f} ms, "
                f"ORT layout reorders {parts.get('layout', 0):.0f} ms); plain model "
                f"{pf.get('kernel_ms_per_run', float('nan')):.0f} ms (of which layout reorders "
                f"{fparts.get('layout', 0):.0f} ms).", "",
                "| rank | op type | ms per run | share | kernel calls per run |", "|---|---|---|---|---|"]
        for i, row in enumerate(pg["by_op"][:10], 1):
            out.append(f"| {i} | {row['op']} | {row['ms_per_run']:.1f} | {100 * row['share']:.1f}% "
                       f"| {row['calls_per_run']:.0f} |")
        if "by_op" in pf:
            out += ["", "Plain model, for comparison: " + ", ".join(
                f"{row['op']} {row['ms_per_run']:.0f} ms" for row in pf["by_op"][:5]) + "."]
        out += ["", "Most expensive nodes of the compiled model:", "",
                "| node | op | part | ms per run | share |", "|---|---|---|---|---|"]
        for row in pg["top_nodes"][:10]:
            out.append(f"| `{row['node']}` | {row['op']} | {row['part']} | {row['ms_per_run']:.1f} "
                       f"| {100 * row['share']:.1f}% |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(common.ARCHS),
                    help="repeatable; default: vgg16 and resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--runs", type=int, default=7, help="timed runs after one warm-up (>= 5)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--compile-repeats", type=int, default=3)
    ap.add_argument("--profile-runs", type=int, default=3)
    ap.add_argument("--wait-idle", type=float, default=300,
                    help="before the timings, wait up to this many seconds for a 1-min load average < 0.6")
    ap.add_argument("--no-torch", dest="torch", action="store_false")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--workdir", help="where the ONNX files go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the ONNX files")
    ap.add_argument("--json", default=JSON_PATH)
    ap.add_argument("--md", default=MD_PATH)
    ap.add_argument("--from-json", action="store_true", help="only rewrite the Markdown from --json")
    ap.add_argument("--add-run", action="append", default=[],
                    help="with --from-json: a JSON of another run of this script to list under 'repeat runs'")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["mode"]](spec)), flush=True)
        return 0
    if args.from_json:
        with open(args.json) as fh:
            data = json.load(fh)
        for extra in args.add_run:
            with open(extra) as fh:
                other = json.load(fh)
            data.setdefault("other_runs", []).append({"date": other["meta"]["date"], "results": [
                {k: r.get(k) for k in ("arch", "pair", "ratio", "ratio_min", "compile")} for r in other["results"]]})
        with open(args.json, "w") as fh:
            json.dump(data, fh, indent=1)
        with open(args.md, "w") as fh:
            fh.write(markdown(data))
        return 0
    import onnx
    import onnxruntime
    import torch

    import onnxplain

    workdir = args.workdir or tempfile.mkdtemp(prefix="onnxplain-bench-grad-")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    meta = {"git": git_state(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
            "onnxplain": getattr(onnxplain, "__version__", "?"), "batch": args.batch, "threads": args.threads,
            "runs": args.runs, "profile_runs": args.profile_runs, "compile_repeats": args.compile_repeats}
    try:
        with open("/proc/cpuinfo") as fh:
            model = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        if model:
            meta["cpu"] = model[0]
            meta["machine"] += f", {model[0]}"
    except OSError:
        pass
    meta["baseline_maxrss_mib"] = run_child({"mode": "baseline", "batch": args.batch}).get("maxrss_mib")
    data = {"meta": meta, "results": []}
    try:
        for arch in args.arch or list(DEFAULT_ARCHS):
            data["results"].append(bench_arch(arch, args, workdir))
            with open(args.json, "w") as fh:
                json.dump(data, fh, indent=1)
            with open(args.md, "w") as fh:
                fh.write(markdown(data))
            for suffix in ("_legacy.onnx", "_gradient.onnx", ".pt"):
                if not args.keep and os.path.exists(os.path.join(workdir, arch + suffix)):
                    os.remove(os.path.join(workdir, arch + suffix))
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(markdown(data))
    print(f"wrote {args.json} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
