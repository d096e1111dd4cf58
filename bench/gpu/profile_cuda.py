#!/usr/bin/env python3
"""Where the GPU time of compiled explanation models goes (ONNX Runtime CUDA provider), in ~90 s of GPU time.

At batch 64 on an H200 the compiled methods took 50-150x ONNX Runtime's CUDA forward pass (ResNet-50:
forward 9.7 ms, gradient 624 ms, lrp.epsilon_plus_flat 571 ms) although the ratio is 2.5-5x on the CPU.
This script measures, for the model (``--model``, default ResNet-50 with random weights exported as
``bench/common.py`` does) at ``--batch`` (default 64):

0. a float16 probe on the small CNN of ``bench/gpu/sanity.py`` (gradient family: finite maps? if not, the
   first node whose output is not finite, from a run with every intermediate as an output);
1. for the forward pass and each compiled method (``--methods``, default gradient and
   lrp.epsilon_plus_flat), with IO binding (device-resident input, outputs bound to the device,
   preallocated) and ONNX Runtime profiling on:

   * wall-clock time per run (median of ``--repeats`` after 2 warm-up runs);
   * host time of every node (ORT's profiler: on CUDA a node's time is the time to *launch* its
     kernels, plus any synchronous work: copies to the host, cuDNN algorithm search, CPU nodes):
     per op type, the top 30 nodes, ``Memcpy*`` nodes (count, time), placement (CPU vs CUDA nodes);
   * GPU kernel time per kernel name (CUPTI, through ``torch.profiler`` when PyTorch with CUDA is
     importable; it records every kernel in the process, ONNX Runtime's included): GPU busy time
     per run vs the wall time (idle gaps = launch overhead / synchronisation);
2. the same with session variants (CUDA provider options): ``cudnn_conv_algo_search`` EXHAUSTIVE
   (ORT's default) / HEURISTIC / DEFAULT, ``prefer_nhwc=1``, ``enable_cuda_graph=1`` (needs every
   node on CUDA; a failure is recorded, not fatal).

Jobs run in priority order and stop when ``--budget-s`` is spent; the results are rewritten after
every job: ``<out>/profile_cuda.json`` and ``<out>/profile_cuda.md``.

``--device cpu`` (dry run without a GPU): CPU provider, the small CNN at batch 2, provider-option
variants skipped, no CUPTI; the same code paths otherwise.

Usage (device machine, from the repository root; ``bench/gpu/device_run.sh`` with ``PROFILE=1``)::

    python bench/gpu/profile_cuda.py --out "$OUT"
    python bench/gpu/profile_cuda.py --device cpu --out /tmp/prof      # dry run
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.dirname(HERE), ROOT]

VARIANTS = {  # name -> CUDA provider options (ORT 1.31 defaults: EXHAUSTIVE search, max workspace, TF32 on);
    "default": {},  # in this order of priority (a spent budget skips the last ones)
    "heuristic": {"cudnn_conv_algo_search": "HEURISTIC"},
    "cuda_graph": {"enable_cuda_graph": "1"},
    "nhwc": {"prefer_nhwc": "1"},
    "algo_default": {"cudnn_conv_algo_search": "DEFAULT"},
}
PROBE_METHODS = {"gradient": {}, "integrated_gradients": {"steps": 8, "chunk": 4},
                 "smoothgrad": {"samples": 4, "chunk": 2}, "guided_backprop": {}}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda, or cpu for a dry run")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="output folder (default $OUT)")
    ap.add_argument("--model", help="resnet50 (cuda default), any bench/common.py ARCHS name, or small_cnn "
                                    "(cpu default; tests/nets.py)")
    ap.add_argument("--batch", type=int, help="batch size (cuda 64, cpu 2)")
    ap.add_argument("--methods", default="gradient,lrp.epsilon_plus_flat", help="comma-separated methods")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="CUDA option variants (cpu: default only)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per job after 2 warm-up runs")
    ap.add_argument("--budget-s", type=float, default=90.0, help="no job starts after this many seconds")
    ap.add_argument("--no-probe", action="store_true", help="skip the float16 probe on the small CNN")
    args = ap.parse_args(argv)
    args.model = args.model or ("resnet50" if args.device == "cuda" else "small_cnn")
    args.batch = args.batch or (64 if args.device == "cuda" else 2)
    return args


def load_model(name: str, workdir: str):
    """(ModelProto, input shape without batch): the small CNN, or an architecture exported like bench/common.py."""
    import onnx

    if name == "small_cnn":
        from nets import small_cnn

        return small_cnn(softmax=False), (3, 8, 8)
    import common
    import torch

    model = common.build(name)
    common.calibrate_batchnorm(model, common.ARCHS[name])
    common.ensure_nondegenerate(model, torch.randn(8, *common.INPUT_SHAPE, generator=torch.Generator().manual_seed(5)))
    path = os.path.join(workdir, f"{name}.onnx")
    common.export_legacy(model, path)
    common.cap_ir_version(path)
    return onnx.load(path), common.INPUT_SHAPE


def providers(device: str, options: dict) -> list:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return [("CUDAExecutionProvider", dict(options)), "CPUExecutionProvider"]


def make_session(model_bytes: bytes, device: str, options: dict, prefix=None, severity: int = 3):
    """A session with ORT profiling on (``prefix``: its file prefix) or off (``None``); ``severity`` 2 lets
    ONNX Runtime's warnings through (cuDNN "Fallback mode", Memcpy nodes added, nodes not on CUDA)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = severity
    if prefix:
        so.enable_profiling = True
        so.profile_file_prefix = prefix
    return ort.InferenceSession(model_bytes, so, providers=providers(device, options))


class Bound:
    """IO binding of one session: the input on the device, outputs preallocated on the device."""

    def __init__(self, sess, x: np.ndarray, device: str, out_specs=None):
        import onnxruntime as ort

        self.sess, self.dev = sess, ("cuda" if device == "cuda" else "cpu")
        self.x = ort.OrtValue.ortvalue_from_numpy(x, self.dev, 0)
        self.binding = sess.io_binding()
        self.binding.bind_ortvalue_input(sess.get_inputs()[0].name, self.x)
        self.names = [o.name for o in sess.get_outputs()]
        self.specs = out_specs
        if out_specs is None:  # first session of a model: let ORT allocate once to learn the shapes
            for n in self.names:
                self.binding.bind_output(n, self.dev)
            self.run()
            self.specs = {n: (tuple(v.shape()), v.numpy().dtype) for n, v in
                          zip(self.names, self.binding.get_outputs())}
        self.outs = {n: ort.OrtValue.ortvalue_from_shape_and_type(s, d, self.dev, 0)
                     for n, (s, d) in self.specs.items()}
        self.binding.clear_binding_outputs()
        for n in self.names:
            self.binding.bind_ortvalue_output(n, self.outs[n])

    def run(self) -> float:
        self.binding.synchronize_inputs()
        t0 = time.perf_counter()
        self.sess.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()
        return time.perf_counter() - t0

    def finite(self) -> bool:
        host = [v.numpy() for v in self.outs.values()]
        return all(bool(np.isfinite(a).all()) for a in host if a.dtype.kind == "f")


def cupti_profile(fn, repeats: int):
    """GPU kernels (name -> [count, total us]) of ``repeats`` calls, via torch.profiler (CUPTI); None if unusable."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        if not torch.cuda.is_available():
            return None
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                fn()
            torch.cuda.synchronize()
        kernels = {}
        for e in prof.events():  # device-side activities only: kernels, memcpy, memset
            if getattr(e, "device_type", None) != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(e, "self_device_time_total", None)
            us = float(getattr(e, "self_cuda_time_total", 0.0) if us is None else us)
            rec = kernels.setdefault(e.name, [0, 0.0])
            rec[0] += 1
            rec[1] += us
        return kernels or {"error": "no CUDA activity recorded (CUPTI unavailable?)"}
    except Exception as exc:  # a missing CUPTI must not stop the profile
        return {"error": f"{type(exc).__name__}: {exc}"}


def node_events(path: str, runs: int) -> tuple:
    """(node events of the last ``runs`` model runs, number of model runs) from an ORT profile file."""
    with open(path) as fh:
        events = json.load(fh)
    os.remove(path)
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    keep = model_runs[-runs:]
    start = keep[0]["ts"] if keep else 0
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e.get("ts", 0) >= start]
    return nodes, len(model_runs)


def summarise_nodes(nodes: list, runs: int) -> dict:
    """Per op type, top 30 nodes, Memcpy nodes and placement, per run (host time of each node, ms)."""
    by_op = collections.defaultdict(lambda: [0, 0.0])
    by_node = collections.defaultdict(lambda: [None, None, 0.0])
    placement = collections.defaultdict(collections.Counter)
    for e in nodes:
        a = e.get("args", {})
        op, prov = a.get("op_name", "?"), a.get("provider", "?")
        ms = e.get("dur", 0) / 1000.0 / runs
        by_op[op][0] += 1
        by_op[op][1] += ms
        rec = by_node[e["name"][:-len("_kernel_time")]]
        rec[0], rec[1], rec[2] = op, prov, rec[2] + ms
        placement[prov][op] += 1
    runs = max(runs, 1)
    ops = sorted(([k, v[0] // runs, round(v[1], 4)] for k, v in by_op.items()), key=lambda r: -r[2])
    top = sorted(([k, v[0], v[1], round(v[2], 4)] for k, v in by_node.items()), key=lambda r: -r[3])[:30]
    memcpy = [r for r in ops if r[0].startswith("Memcpy")]
    return {"host_ms_per_run": round(sum(r[2] for r in ops), 3), "by_op": ops, "top_nodes": top,
            "memcpy": {"nodes_per_run": sum(r[1] for r in memcpy), "ms_per_run": round(sum(r[2] for r in memcpy), 3),
                       "by_op": memcpy},
            "placement": {p: {"nodes_per_run": sum(c.values()) // runs, "ops": {k: v // runs for k, v in c.items()}}
                          for p, c in placement.items()}}


def profile_job(subject: str, model_bytes: bytes, x: np.ndarray, args, variant: str, specs: dict,
                tmp: str, cupti: bool) -> dict:
    """One session: warm-up, timed runs, ORT node profile, optional CUPTI kernels."""
    rec = {"subject": subject, "variant": variant, "options": VARIANTS[variant]}
    log = os.path.join(tmp, f"{subject}_{variant}.log")
    with stderr_to(log):  # ORT's C++ logger writes to file descriptor 2
        t0 = time.perf_counter()
        sess = make_session(model_bytes, args.device, VARIANTS[variant], os.path.join(tmp, f"{subject}_{variant}"),
                            severity=2)
        rec["session_s"] = round(time.perf_counter() - t0, 3)
        bound = Bound(sess, x, args.device, specs.get(subject))
        rec["warmup_ms"] = [round(1000 * bound.run(), 2) for _ in range(2)]
    rec["ort_warnings"] = ort_warnings(log)
    rec["providers"] = sess.get_providers()
    if args.device == "cuda":
        rec["cuda_options"] = {k: v for k, v in sess.get_provider_options().get("CUDAExecutionProvider", {}).items()
                               if k in ("cudnn_conv_algo_search", "prefer_nhwc", "enable_cuda_graph", "use_tf32",
                                        "cudnn_conv_use_max_workspace", "arena_extend_strategy")}
    specs.setdefault(subject, bound.specs)
    rec.update(_timed(bound, args.repeats))
    rec["finite"] = bound.finite()
    nodes, n_runs = node_events(sess.end_profiling(), args.repeats)
    rec["model_runs_profiled"] = n_runs
    rec.update(summarise_nodes(nodes, args.repeats))
    rec["host_gap_ms_per_run"] = round(rec["wall_ms_mean"] - rec["host_ms_per_run"], 3)
    if cupti and args.device == "cuda":
        times = []
        kernels = cupti_profile(lambda: times.append(bound.run()), args.repeats)
        if kernels and "error" not in kernels:
            busy = sum(v[1] for v in kernels.values()) / 1000.0 / args.repeats
            wall = 1000 * statistics.mean(times)
            top = sorted(([k[:120], v[0] // args.repeats, round(v[1] / 1000.0 / args.repeats, 4)]
                          for k, v in kernels.items()), key=lambda r: -r[2])
            rec["gpu"] = {"busy_ms_per_run": round(busy, 3), "wall_ms_mean": round(wall, 3),
                          "idle_ms_per_run": round(wall - busy, 3), "kernels_per_run": sum(r[1] for r in top),
                          "top_kernels": top[:30]}
        else:
            rec["gpu"] = kernels
    if variant == "default":  # the same without ORT's profiler (its per-node bookkeeping is not free)
        del bound, sess
        plain = Bound(make_session(model_bytes, args.device, VARIANTS[variant]), x, args.device, specs[subject])
        [plain.run() for _ in range(2)]
        rec["no_profiler"] = _timed(plain, args.repeats)
    return rec


@contextlib.contextmanager
def stderr_to(path: str):
    """Send file descriptor 2 (C++ ``std::cerr`` included) to ``path`` inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as fh:
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


WARNING_KEYS = ("Fallback", "Memcpy", "not assigned", "CPU", "cudnn", "cuDNN", "slow")


def ort_warnings(path: str) -> dict:
    """ONNX Runtime's warnings of session creation and the first runs: count, lines naming the suspects
    of docs/cuda.md ("Fallback mode" of cuDNN, Memcpy nodes, nodes left on the CPU), first 40 distinct."""
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError as exc:
        return {"error": repr(exc)}
    keyed = [ln for ln in lines if any(k in ln for k in WARNING_KEYS)]
    distinct = list(dict.fromkeys(ln[:400] for ln in keyed))
    return {"lines": len(lines), "keyed": len(keyed),
            "fallback_mode": sum("Fallback" in ln for ln in lines), "distinct": distinct[:40],
            "other_first": [ln[:400] for ln in lines if ln not in keyed][:10]}


def _timed(bound: Bound, repeats: int) -> dict:
    times = [1000 * bound.run() for _ in range(repeats)]
    return {"wall_ms": round(statistics.median(times), 3), "wall_ms_mean": round(statistics.mean(times), 3),
            "wall_ms_all": [round(t, 3) for t in times]}


def probe_float16(args) -> dict:
    """Float16 gradient family on the small CNN (sanity.py's input): finite? else the first non-finite node."""
    import onnxruntime as ort

    import onnxplain
    from nets import small_cnn

    model = small_cnn(softmax=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    out = {}
    for method, params in PROBE_METHODS.items():
        m16 = onnxplain.compile(model, method, precision="float16", **params)
        sess = ort.InferenceSession(m16.SerializeToString(), so, providers=providers(args.device, {}))
        res = sess.run(None, {"x": x})[-1]
        rec = {"finite": bool(np.isfinite(res).all()), "abs_max": float(np.nanmax(np.abs(res)))}
        if not rec["finite"]:
            rec["first_non_finite"] = _first_non_finite(m16, x, args.device)
        out[method] = rec
    return out


def _first_non_finite(m16, x: np.ndarray, device: str):
    """Main-graph node outputs in order; the first one holding inf/NaN (every output exposed, one run)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(m16)
    known = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node for o in n.output if o and o not in known]
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=providers(device, {}))
    vals = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for n in m.graph.node:
        for o in n.output:
            v = vals.get(o)
            if v is not None and np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all():
                return {"node": n.name, "op": n.op_type, "output": o, "inputs": list(n.input)}
    return None


def jobs(args) -> list:
    """(subject, variant, cupti) in priority order: defaults first (with CUPTI), then the option variants."""
    subjects = ["forward"] + [m for m in args.methods.split(",") if m]
    variants = [v for v in args.variants.split(",") if v] if args.device == "cuda" else ["default"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    out = [(s, "default", True) for s in subjects if "default" in variants]
    out += [(s, v, False) for v in variants if v != "default" for s in subjects[1:] + subjects[:1]]
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.device == "cuda":
        try:  # PyTorch first, as in sanity.py (its CUDA/cuDNN libraries; CUPTI through torch.profiler)
            import torch  # noqa: F401
        except ImportError:
            pass
    import onnxruntime as ort

    if args.device == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if args.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        print("!! no CUDAExecutionProvider in this onnxruntime", flush=True)
        return 1
    import onnxplain

    t_start = time.perf_counter()
    report = {"onnxruntime": ort.__version__, "device": args.device, "model": args.model, "batch": args.batch,
              "repeats": args.repeats, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "jobs": []}
    if not args.no_probe:
        report["float16_probe"] = probe_float16(args)
        print("float16 probe (small CNN):", json.dumps(report["float16_probe"]), flush=True)
    with tempfile.TemporaryDirectory(prefix="onnxplain-prof-") as tmp:
        model, shape = load_model(args.model, tmp)
        x = np.random.default_rng(0).standard_normal((args.batch, *shape)).astype(np.float32)
        subjects = {"forward": model.SerializeToString()}
        specs = {}
        for subject, variant, cupti in jobs(args):
            if time.perf_counter() - t_start > args.budget_s:
                report["jobs"].append({"subject": subject, "variant": variant, "skipped": "budget"})
                continue
            if subject not in subjects:
                t0 = time.perf_counter()
                subjects[subject] = onnxplain.compile(model, subject).SerializeToString()
                report.setdefault("compile_s", {})[subject] = round(time.perf_counter() - t0, 2)
            try:
                rec = profile_job(subject, subjects[subject], x, args, variant, specs, tmp, cupti)
            except Exception as exc:  # e.g. enable_cuda_graph with nodes on the CPU
                rec = {"subject": subject, "variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            report["jobs"].append(rec)
            print(_line(rec), flush=True)
            write(report, args.out)
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    write(report, args.out)
    print(f"wrote {os.path.join(args.out, 'profile_cuda.json')} and .md ({report['elapsed_s']} s)", flush=True)
    return 0


def _line(rec: dict) -> str:
    head = f"{rec['subject']:24s} {rec['variant']:12s}"
    if "error" in rec or "skipped" in rec:
        return f"{head} {rec.get('error') or 'skipped: ' + rec['skipped']}"
    gpu = rec.get("gpu") or {}
    busy = f", GPU busy {gpu['busy_ms_per_run']:.2f} ms" if "busy_ms_per_run" in gpu else ""
    where = ", ".join(f"{p}: {v['nodes_per_run']}" for p, v in rec["placement"].items())
    return (f"{head} wall {rec['wall_ms']:9.2f} ms, node host time {rec['host_ms_per_run']:9.2f} ms{busy}, "
            f"Memcpy {rec['memcpy']['nodes_per_run']} ({rec['memcpy']['ms_per_run']:.2f} ms), "
            f"placement {{{where}}}, finite {rec['finite']}")


def write(report: dict, out: str) -> None:
    """profile_cuda.json and profile_cuda.md in ``out`` (temporary files renamed: never half-written)."""
    os.makedirs(out, exist_ok=True)
    for name, text in (("profile_cuda.json", json.dumps(report, indent=1, default=str)),
                       ("profile_cuda.md", markdown(report))):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(out, name))


def markdown(report: dict) -> str:
    lines = [f"# CUDA profile: {report['model']} batch {report['batch']} ({report['device']}, onnxruntime "
             f"{report['onnxruntime']}, {report['date']})", "",
             "Wall: median per run with IO binding (input and outputs on the device), ORT profiler on; "
             "'no prof.': the same session options without the profiler. Node host time: ORT's profiler "
             "(on CUDA: kernel launch time plus synchronous work), mean per run. GPU busy: sum of the CUDA "
             "kernels per run (CUPTI via torch.profiler). Gap = mean wall - node host time; idle = wall - GPU busy.",
             "", "| subject | variant | session s | wall ms | no prof. ms | node host ms | gap ms | GPU busy ms"
             " | idle ms | Memcpy n (ms) | nodes CUDA/CPU | finite |", "|---" * 12 + "|"]
    for r in report["jobs"]:
        if "wall_ms" not in r:
            lines.append(f"| {r['subject']} | {r['variant']} | {r.get('error') or r.get('skipped')} ||||||||||")
            continue
        g = r.get("gpu") or {}
        pl = r["placement"]
        noprof = r.get("no_profiler", {}).get("wall_ms", "")
        lines.append(f"| {r['subject']} | {r['variant']} | {r['session_s']} | {r['wall_ms']} | {noprof} | "
                     f"{r['host_ms_per_run']} | "
                     f"{r['host_gap_ms_per_run']} | {g.get('busy_ms_per_run', '')} | {g.get('idle_ms_per_run', '')} | "
                     f"{r['memcpy']['nodes_per_run']} ({r['memcpy']['ms_per_run']}) | "
                     f"{pl.get('CUDAExecutionProvider', {}).get('nodes_per_run', 0)}/"
                     f"{pl.get('CPUExecutionProvider', {}).get('nodes_per_run', 0)} | {r['finite']} |")
    if "float16_probe" in report:
        lines += ["", "## Float16 probe (small CNN, gradient family)", ""]
        lines += [f"* {k}: {json.dumps(v)}" for k, v in report["float16_probe"].items()]
    for r in report["jobs"]:
        if r.get("variant") == "default" and "by_op" in r:
            lines += _detail(r)
    return "\n".join(lines) + "\n"


def _detail(r: dict) -> list:
    out = ["", f"## {r['subject']} (default options)", "", "Host time per op type (ms per run):", "",
           "| op | nodes | host ms |", "|---|---|---|"]
    out += [f"| {op} | {n} | {ms} |" for op, n, ms in r["by_op"]]
    out += ["", "Top 30 nodes (host ms per run):", "", "| node | op | provider | host ms |", "|---|---|---|---|"]
    out += [f"| {name} | {op} | {prov} | {ms} |" for name, op, prov, ms in r["top_nodes"]]
    out += ["", "CPU-placed ops: " + json.dumps(r["placement"].get("CPUExecutionProvider", {}).get("ops", {}))]
    w = r.get("ort_warnings") or {}
    out += ["", f"ONNX Runtime warnings (session + 2 warm-up runs): {w.get('lines', '?')} lines, "
            f"{w.get('fallback_mode', '?')} cuDNN 'Fallback mode'" + (":" if w.get("distinct") else ""), ""]
    out += [f"    {ln}" for ln in w.get("distinct", [])[:20]]
    g = r.get("gpu")
    if g and "top_kernels" in g:
        out += ["", "Top GPU kernels (ms per run):", "", "| kernel | launches | GPU ms |", "|---|---|---|"]
        out += [f"| `{k}` | {n} | {ms} |" for k, n, ms in g["top_kernels"]]
    elif g:
        out += ["", f"GPU kernels: {g}"]
    return out


if __name__ == "__main__":
    sys.exit(main())
