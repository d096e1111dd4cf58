"""Where the time of a compiled explanation model goes: ONNX Runtime's profiler, per op type and per emitted group.

Runs in the reference venv when it has to export a torchvision model (``--arch``); a plain ONNX file
(``--model``) needs only onnxruntime and onnxplain.  Nothing here is imported by the package.

Examples (from the repository root)::

    /work/venv-ref/bin/python bench/profile_ops.py --arch resnet50 --method lrp.epsilon_plus_flat --batch 2
    /work/venv-ref/bin/python bench/profile_ops.py --arch vgg16 --method gradient --ab --batch 4 --runs 9
    python bench/profile_ops.py --model compiled.onnx --original model.onnx --batch 2

What it reports, for each (model, method):

* kernel time per run (``SessionOptions.enable_profiling``; the warm-up run is excluded) split into the
  original model's nodes (*forward*), the nodes onnxplain emitted (*added*) and ONNX Runtime's NCHWc
  layout conversions (*layout*: ``ReorderInput``/``ReorderOutput``), and the plain model's kernel time;
* kernel time per op type (ORT reports fused kernels by their fused type, e.g. ``FusedConv``);
* kernel time per emitted *group*: an emitted node is named ``<forward node>/<rule>/<op>``, so the group
  ``(forward op type, rule, emitted op type)`` says e.g. how much the divisions of the z+ rule at
  convolutions cost, over all layers;
* constant nodes that ONNX Runtime did *not* fold (a node whose inputs are all initializers or constant
  node outputs, e.g. a modified weight, that still runs at run time), which should be none;
* with ``--ab``: wall-clock time of the plain and the compiled model, interleaved in one process
  (plain, compiled, plain, ...), minimum and median of ``--runs``; with ``--compare FILE`` the same
  for a second compiled file (A/B between two compilations of the same method).

Timings on a shared machine are noisy: decide from kernel-time shares and from the minima of
interleaved runs, not from one wall-clock number.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

#: extra parameters per method (as bench_lrp.py: inputs are N(0, 1), so the box is [-3, 3])
METHOD_PARAMS = {"lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0}}
LAYOUT_OPS = ("ReorderInput", "ReorderOutput")


def export(arch: str, workdir: str) -> str:
    """The torchvision ``arch`` (seeded weights, BatchNorm calibrated) exported once to ``workdir``."""
    path = os.path.join(workdir, f"{arch}_legacy.onnx")
    if os.path.exists(path):
        return path
    import torch

    torch.set_num_threads(2)
    model = common.build(arch)
    common.calibrate_batchnorm(model, common.ARCHS[arch])
    common.ensure_nondegenerate(model, torch.randn(8, *common.INPUT_SHAPE,
                                                   generator=torch.Generator().manual_seed(5)))
    tmp = path + ".part"
    common.export_legacy(model, tmp)
    common.cap_ir_version(tmp)
    os.replace(tmp, path)
    return path


def compile_method(original: str, method: str, out: str, package_root: str = "") -> float:
    """Compile ``method`` into ``out`` in a fresh interpreter; return the compile seconds (load excluded).

    ``package_root``: a directory holding another ``onnxplain`` package (e.g. a baseline commit's,
    with ``compiler``/``rules``/``runtime`` copied into it), put first on ``PYTHONPATH``.
    """
    code = ("import json, sys, time, onnx, onnxplain\n"
            "proto = onnx.load(sys.argv[1])\n"
            "t0 = time.perf_counter()\n"
            "m = onnxplain.compile(proto, [sys.argv[2]], **json.loads(sys.argv[4]))\n"
            "dt = time.perf_counter() - t0\n"
            "onnx.save(m, sys.argv[3])\n"
            "print(dt, onnxplain.__file__)\n")
    env = dict(os.environ)
    if package_root:
        env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code, original, method, out, json.dumps(METHOD_PARAMS.get(method, {}))],
                          capture_output=True, text=True, env=env, cwd=package_root or None)
    if proc.returncode != 0:
        raise RuntimeError(f"compile of {method} failed: {proc.stderr[-2000:]}")
    seconds, where = proc.stdout.split()[-2:]
    print(f"  ({method} compiled by {where})", flush=True)
    return float(seconds)


def make_input(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch,) + common.INPUT_SHAPE).astype(np.float32)


def _constant_nodes(proto: onnx.ModelProto) -> set:
    """Names of nodes computable from initializers alone (ORT should fold them at session creation)."""
    known = {t.name for t in proto.graph.initializer}
    names = set()
    for n in proto.graph.node:
        if n.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"):
            continue
        ins = [i for i in n.input if i]
        if all(i in known for i in ins) and (ins or n.op_type in ("Constant", "ConstantOfShape")):
            known.update(o for o in n.output if o)
            names.add(n.name)
    return names


class NodeIndex:
    """Maps ORT's kernel names back to the compiled model's nodes: part, forward op and emitted group."""

    def __init__(self, compiled: onnx.ModelProto, original_nodes: dict):
        self.original = original_nodes  # name -> op type
        self.by_name = {n.name: n for n in compiled.graph.node}
        self.by_output = {o: n for n in compiled.graph.node for o in n.output if o}
        self.constant = _constant_nodes(compiled)
        # longest forward names first, so that '/a/b' wins over '/a'
        self._labels = sorted(original_nodes, key=len, reverse=True)

    def node_of(self, kernel: str):
        """The compiled-model node an ORT kernel stands for (None for ORT's own layout nodes)."""
        n = self.by_name.get(kernel)
        if n is None and kernel.endswith("_nchwc"):
            n = self.by_output.get(kernel[:-len("_nchwc")])
        return n

    def classify(self, kernel: str, op: str) -> tuple:
        """``(part, group)``: part in forward/added/layout; group ``forward op | rule | emitted op``."""
        if op in LAYOUT_OPS:
            return "layout", "ORT layout | - | " + op
        n = self.node_of(kernel)
        name = n.name if n is not None else kernel
        if name in self.original:
            return "forward", f"{self.original[name]} | forward | {op}"
        for label in self._labels:
            if name.startswith(label + "/"):
                rest = name[len(label) + 1:].split("/")
                rule = "/".join(rest[:-1]) or "?"
                return "added", f"{self.original[label]} | {rule} | {op}"
        if "/fanout/" in name:
            return "added", f"fan-out | sum | {op}"
        head = name.split("/")[0] or name
        return "added", f"{head} | - | {op}"


def profile(model_path: str, original_path: str, batch: int, runs: int, threads: int) -> dict:
    """Kernel time per op type, part, group and node over ``runs`` runs after one warm-up."""
    compiled = onnx.load(model_path, load_external_data=False)
    original = onnx.load(original_path, load_external_data=False)
    index = NodeIndex(compiled, {n.name: n.op_type for n in original.graph.node})
    del original
    prefix = os.path.join(tempfile.gettempdir(), f"onnxplain_profile_{os.getpid()}")
    sess = common.ort_session(model_path, threads, profile_prefix=prefix)
    feeds = {sess.get_inputs()[0].name: make_input(batch)}
    for _ in range(runs + 1):
        sess.run(None, feeds)
    path = sess.end_profiling()
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    del sess
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    warm_end = run_events[0]["ts"] + run_events[0]["dur"] if run_events else 0
    acc = {k: collections.Counter() for k in ("op", "calls", "part", "group", "group_calls", "node")}
    unfolded = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < warm_end:
            continue
        op = e.get("args", {}).get("op_name", "?")
        kernel = e["name"][: -len("_kernel_time")]
        part, group = index.classify(kernel, op)
        us = e["dur"]
        acc["op"][op] += us
        acc["calls"][op] += 1
        acc["part"][part] += us
        acc["group"][group] += us
        acc["group_calls"][group] += 1
        acc["node"][(kernel, op, part)] += us
        n = index.node_of(kernel)
        if n is not None and n.name in index.constant:
            unfolded[(n.name, n.op_type)] += us
    n_runs = max(len(run_events) - 1, 1)
    total = sum(acc["op"].values()) or 1

    def rows(counter, calls=None, limit=None):
        return [{"key": k, "ms": v / n_runs / 1e3, "share": v / total,
                 **({"calls": calls[k] / n_runs} if calls is not None else {})}
                for k, v in counter.most_common(limit)]
    return {"model": os.path.basename(model_path), "batch": batch, "runs": n_runs, "threads": threads,
            "kernel_ms": total / n_runs / 1e3, "model_run_ms": [r["dur"] / 1e3 for r in run_events[1:]],
            "by_part": {k: v / n_runs / 1e3 for k, v in acc["part"].items()},
            "by_op": rows(acc["op"], acc["calls"]), "by_group": rows(acc["group"], acc["group_calls"]),
            "top_nodes": rows(acc["node"], limit=15),
            "unfolded": [{"node": k[0], "op": k[1], "ms": v / n_runs / 1e3} for k, v in unfolded.most_common()],
            "nodes_in_file": len(compiled.graph.node), "constant_nodes_in_file": len(index.constant)}


def interleaved(paths: list, batch: int, runs: int, threads: int, cpu: bool = False) -> list:
    """Seconds of each model, run in turn (a, b, c, a, b, c, ...) ``runs`` times after a warm-up.

    ``cpu``: this process's CPU time per run instead of wall time (with one thread: robust to other
    processes taking turns on the CPUs, though not to their use of caches and memory bandwidth).
    A 50 ms pause follows every run: without it the previous session's spinning pool threads slowed the
    next session down (ResNet-50 gradient / forward: 3.16 without, 2.95 with, on 2 cores).
    """
    x = make_input(batch)
    sessions = [common.ort_session(p, threads) for p in paths]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    clock = time.process_time if cpu else time.perf_counter
    times = [[] for _ in paths]
    for r in range(runs + 1):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t0 = clock()
            s.run(None, f)
            if r:
                times[i].append(clock() - t0)
            time.sleep(0.05)  # every session has its own thread pool, whose threads spin for a while after a run
    return times


_PEAK_CODE = """
import sys, numpy as np, onnxruntime as ort
def hwm():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024.0
base = hwm()
if sys.argv[1] != '-':
    so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3]); so.log_severity_level = 3
    s = ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])
    x = np.random.default_rng(0).standard_normal((int(sys.argv[2]), 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        s.run(None, {s.get_inputs()[0].name: x})
print(base, hwm())
"""


def peak_rss(path: str, batch: int, threads: int) -> float:
    """Peak resident set (VmHWM, MiB) of a fresh process that loads ``path`` and runs it twice
    (``path='-'``: the process with Python, numpy and onnxruntime imported only)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK_CODE, path, str(batch), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.split()[-1])


def markdown_memory(title: str, names: list, peaks: list, baseline: float) -> list:
    out = [f"Peak RSS ({title}; VmHWM of a fresh process: load, 2 runs; Python + onnxruntime alone: "
           f"{baseline:.0f} MiB):", "", "| model | peak MiB | / plain | (peak - baseline) / (plain - baseline) |",
           "|---|---|---|---|"]
    for name, p in zip(names, peaks):
        out.append(f"| {name} | {p:.0f} | {p / peaks[0]:.2f} | {(p - baseline) / max(peaks[0] - baseline, 1):.2f} |")
    return out + [""]


def _ms(v: float) -> str:
    return f"{v:.1f}"


def markdown_profile(title: str, prof: dict, plain: dict, top: int = 15) -> list:
    part = prof["by_part"]
    out = [f"### {title}", "",
           f"Batch {prof['batch']}, {prof['threads']} threads, {prof['runs']} profiled runs after 1 warm-up. "
           f"Kernel time per run: **{_ms(prof['kernel_ms'])} ms** (forward nodes {_ms(part.get('forward', 0))}, "
           f"added {_ms(part.get('added', 0))}, layout reorders {_ms(part.get('layout', 0))}); plain model "
           f"{_ms(plain['kernel_ms'])} ms: **kernel ratio {prof['kernel_ms'] / plain['kernel_ms']:.2f}**. "
           f"Nodes in the file: {prof['nodes_in_file']} ({prof['constant_nodes_in_file']} constant, folded by ORT "
           f"at session creation).", ""]
    if prof["unfolded"]:
        out += ["**Constant nodes still running** (not folded): " +
                ", ".join(f"`{u['node']}` ({u['op']}, {_ms(u['ms'])} ms)" for u in prof["unfolded"][:10]), ""]
    else:
        out += ["No constant node runs at run time (every weight modification was folded).", ""]
    out += ["| op type | ms per run | share | calls per run |", "|---|---|---|---|"]
    out += [f"| {r['key']} | {_ms(r['ms'])} | {r['share']:.1%} | {r['calls']:.0f} |" for r in prof["by_op"][:top]]
    out += ["", "| forward op \\| rule \\| emitted op | ms per run | share | calls per run |", "|---|---|---|---|"]
    out += [f"| {r['key'].replace('|', chr(92) + '|')} | {_ms(r['ms'])} | {r['share']:.1%} | {r['calls']:.0f} |"
            for r in prof["by_group"][:top]]
    out += ["", "Plain model: " + ", ".join(f"{r['key']} {_ms(r['ms'])} ms" for r in plain["by_op"][:6]), ""]
    return out


def markdown_ab(title: str, names: list, times: list) -> list:
    base = times[0]
    out = [f"Interleaved runs ({title}, {len(base)} rounds):", "",
           "| model | min s | median s | min / plain min | median / plain median |", "|---|---|---|---|---|"]
    for name, t in zip(names, times):
        out.append(f"| {name} | {min(t):.3f} | {float(np.median(t)):.3f} | {min(t) / min(base):.2f} | "
                   f"{float(np.median(t)) / float(np.median(base)):.2f} |")
    return out + [""]


def _emit(block: list, md_path: str) -> None:
    """Print a markdown block and append it to ``md_path`` (as soon as it is measured)."""
    print("\n".join(block), flush=True)
    if md_path:
        with open(md_path, "a") as fh:
            fh.write("\n".join(block) + "\n")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=[], help="torchvision architecture (repeatable; "
                    "needs torch): exported once to --workdir")
    ap.add_argument("--method", action="append", default=[], help="method to compile (repeatable)")
    ap.add_argument("--model", help="profile this compiled ONNX file instead (with --original)")
    ap.add_argument("--original", help="the model --model was compiled from (the plain forward)")
    ap.add_argument("--compare", action="append", default=[],
                    help="another compiled file of the same model, timed in the --ab rounds (repeatable)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="profiled runs (after 1 warm-up)")
    ap.add_argument("--ab-runs", type=int, default=7, help="interleaved rounds of --ab")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ab", action="store_true", help="also time plain and compiled models interleaved")
    ap.add_argument("--cpu-time", action="store_true", help="--ab measures CPU time, not wall time (use with "
                    "--threads 1 on a busy machine)")
    ap.add_argument("--package", default="", help="directory holding the onnxplain package to compile with "
                    "(default: the one this interpreter imports)")
    ap.add_argument("--baseline", default="", help="directory holding a baseline onnxplain package: each method "
                    "is also compiled with it (tag _base), profiled and timed in the same --ab rounds")
    ap.add_argument("--no-profile", dest="do_profile", action="store_false")
    ap.add_argument("--memory", action="store_true", help="also the peak RSS of plain and compiled models "
                    "(fresh process each)")
    ap.add_argument("--top", type=int, default=15, help="rows per table")
    ap.add_argument("--tag", default="", help="suffix of the compiled file names in --workdir")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "onnxplain-profile"))
    ap.add_argument("--md", help="append the tables to this markdown file")
    ap.add_argument("--json", help="write everything to this JSON file")
    return ap


def _jobs(args, ap) -> list:
    """``(title, original, compiled, extra compiled files to time with it)`` for each requested model."""
    os.makedirs(args.workdir, exist_ok=True)
    jobs = []  # (title, original, compiled)
    if args.model:
        if not args.original:
            ap.error("--model needs --original")
        jobs.append((os.path.basename(args.model), args.original, args.model, []))
    for arch in args.arch:
        original = export(arch, args.workdir)
        for method in args.method or ["gradient"]:
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", method)
            out = os.path.join(args.workdir, f"{arch}_{safe}{args.tag}.onnx")
            secs = compile_method(original, method, out, args.package)
            print(f"compiled {arch} {method} in {secs:.2f} s -> {out}", flush=True)
            extra = []
            if args.baseline:
                base = os.path.join(args.workdir, f"{arch}_{safe}_base.onnx")
                secs = compile_method(original, method, base, args.baseline)
                print(f"compiled {arch} {method} (baseline) in {secs:.2f} s -> {base}", flush=True)
                jobs.append((f"{arch} {method} (baseline)", original, base, []))
                extra = [base]
            jobs.append((f"{arch} {method}", original, out, extra))
    if not jobs:
        ap.error("give --arch (with --method) or --model")
    return jobs


def _run(args, jobs: list) -> None:
    """Profile, time and measure each job; write markdown/JSON as each finishes."""
    results, plain_cache = [], {}
    for title, original, compiled, extra in jobs:
        res = {"title": title, "compiled": compiled}
        if args.do_profile:
            if original not in plain_cache:
                plain_cache[original] = profile(original, original, args.batch, args.runs, args.threads)
            res["profile"] = profile(compiled, original, args.batch, args.runs, args.threads)
            res["plain"] = plain_cache[original]
            block = markdown_profile(title, res["profile"], res["plain"], args.top)
            _emit(block, args.md)
        if args.ab and not title.endswith("(baseline)"):
            paths = [original, compiled] + extra + list(args.compare)
            names = [os.path.basename(p) if i else "plain" for i, p in enumerate(paths)]
            res["ab"] = dict(zip(names, interleaved(paths, args.batch, args.ab_runs, args.threads, args.cpu_time)))
            what = "CPU time" if args.cpu_time else "wall clock"
            block = markdown_ab(f"{title}, batch {args.batch}, {args.threads} threads, {what}", names,
                                list(res["ab"].values()))
            _emit(block, args.md)
        if args.memory and not title.endswith("(baseline)"):
            paths = [original, compiled] + extra
            names = [os.path.basename(p) if i else "plain" for i, p in enumerate(paths)]
            base_rss = peak_rss("-", args.batch, args.threads)
            peaks = [peak_rss(p, args.batch, args.threads) for p in paths]
            res["peak_rss_mib"] = dict(zip(names, peaks), baseline=base_rss)
            block = markdown_memory(f"{title}, batch {args.batch}", names, peaks, base_rss)
            _emit(block, args.md)
        results.append(res)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)




def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    _run(args, _jobs(args, ap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
