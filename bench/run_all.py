#!/usr/bin/env python3
"""One-command benchmark: ONNX Runtime forward pass, onnxplain's compiled methods, Zennit and Captum.

Run in an environment with torch, torchvision, onnxruntime (or onnxruntime-gpu) and, optionally, zennit,
captum and efficientnet-lite-pytorch (the reference venv here)::

    /work/venv-ref/bin/python bench/run_all.py --device cpu                 # the full CPU run
    python bench/run_all.py --device cuda --budget-s 300                     # GPU (bench/gpu/device_run.sh)
    python bench/run_all.py --device cpu --models resnet50 --methods gradient --batches 1 --repeats 3

For every model and batch size it measures, on the same machine and the same input (N(0, 1), seed 0):
ONNX Runtime's plain forward pass; each onnxplain method compiled into its own model (compile time =
the seed paper's "setup" time, and run time); the same methods in Zennit and Captum where they exist
(PyTorch, parameters frozen, eval mode). It reports medians over repeated runs, peak memory, the ratios
onnxplain / ORT forward and peer / onnxplain, and writes ``<out>/run_all_<device>.json`` (after every
job: partial results survive a timeout), ``.md`` and ``.png``. See bench/README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402
import harness_report  # noqa: E402
from harness_measure import METHODS  # noqa: E402
from harness_peers import PEER_METHODS  # noqa: E402

MODELS = ("vgg16", "resnet50", "efficientnet_lite0", "mobilenet_v2")
DEFAULTS = {  # per device: batches, repeats, max seconds per job, compile repeats, images per IG/SmoothGrad expansion
    "cpu": {"batches": "1,8", "repeats": 5, "max_job_s": 120.0, "compile_repeats": 3, "chunk_images": 32,
            "isolate": "job", "paired_rounds": 5},
    "cuda": {"batches": "64,8,1", "repeats": 10, "max_job_s": 4.0, "compile_repeats": 1, "chunk_images": 256,
             "isolate": "engine", "paired_rounds": 0},
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cpu: ONNX Runtime CPU provider and PyTorch on the CPU; cuda: CUDA provider with device-"
                         "resident inputs (IO binding) and PyTorch on the GPU")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated onnxplain methods (default: all 8)")
    ap.add_argument("--batches", help="comma-separated batch sizes (default cpu: 1,8; cuda: 64,8,1)")
    ap.add_argument("--peers", default="zennit,captum",
                    help="comma-separated peers, or 'none'; peers whose package is missing are left out")
    ap.add_argument("--precisions", default="float32",
                    help="float32 and/or float16 (compiled with precision='float16'; for GPUs)")
    ap.add_argument("--fp16-methods", default="gradient,lrp.epsilon_plus_flat,lrp.epsilon_gamma_box",
                    help="the methods also timed in float16 when --precisions includes float16")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, torch.set_num_threads")
    ap.add_argument("--repeats", type=int, help="timed runs per job after 1 warm-up (cpu 5, cuda 10)")
    ap.add_argument("--min-repeats", type=int, default=3, help="timed runs at least (unless the budget runs out)")
    ap.add_argument("--max-job-s", type=float, help="stop repeating a job after this many seconds (cpu 120, cuda 4)")
    ap.add_argument("--compile-repeats", type=int, help="compiles per method, median reported (cpu 3, cuda 1)")
    ap.add_argument("--chunk-images", type=int,
                    help="memory bound of IG/SmoothGrad: images per expanded batch (onnxplain chunk = this / batch; "
                         "Captum's internal batch sizes likewise); cpu 32, cuda 256")
    ap.add_argument("--paired-rounds", type=int,
                    help="after its own timing, each onnxplain job of at most 15 s per call alternates this many "
                         "calls with the plain forward pass in the same process: ratios that a shared machine's "
                         "changing load does not skew (cpu 5, cuda 0 = off)")
    ap.add_argument("--isolate", choices=["job", "engine"],
                    help="one measuring process per job (exact peak RSS; cpu default) or per engine (cuda default)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="wall-clock budget: configurations that no longer fit are skipped (0: none)")
    ap.add_argument("--wait-idle", type=float, default=0.0,
                    help="before each model, wait up to this many seconds for a 1-min load average < 0.6")
    ap.add_argument("--out-dir", default=common.RESULTS, help="where run_all_<device>.{json,md,png} go")
    ap.add_argument("--tag", default="", help="suffix of the output names (run_all_<device><tag>.*)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results already in the JSON and run only the jobs missing there")
    ap.add_argument("--workdir", help="exported models (default: a temporary directory, removed at the end)")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the .md and .png from the .json")
    ap.add_argument("--note", help="a remark printed under the report's header (e.g. machine load); kept on --resume")
    ap.add_argument("--prepare-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    d = DEFAULTS[args.device]
    for key in ("repeats", "max_job_s", "compile_repeats", "chunk_images", "isolate", "paired_rounds"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    args.batches = [int(b) for b in (args.batches or d["batches"]).split(",")]
    args.models = [m for m in args.models.split(",") if m]
    args.methods = [m for m in args.methods.split(",") if m]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.fp16_methods = [m for m in args.fp16_methods.split(",") if m]
    bad = [m for m in args.models if m not in common.ARCHS] + [m for m in args.methods if m not in METHODS]
    bad += [p for p in args.precisions if p not in ("float32", "float16")]
    if bad:
        ap.error(f"unknown model/method/precision: {bad}")
    wanted = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    args.peers = [p for p in wanted if p in PEER_METHODS and importlib.util.find_spec(p) is not None]
    args.missing_peers = [p for p in wanted if p not in args.peers]
    return args


def prepare_child(spec: dict) -> dict:
    """Export one model (legacy exporter) and save its state dict; EfficientNet-Lite0 uses the bundled ONNX."""
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["model"] == "efficientnet_lite0":
        model = common.build("efficientnet_lite0")
        common.calibrate_batchnorm(model, common.ARCHS["efficientnet_lite0"])
        state = os.path.join(spec["workdir"], "efficientnet_lite0.pt")
        torch.save(model.state_dict(), state)
        return {"path": common.BUNDLED_EFFICIENTNET_LITE0, "state": state, "source": "bundled ONNX (pretrained); "
                "torch peers: efficientnet-lite-pytorch, random weights, BatchNorm calibrated"}
    info = common.prepare(spec["model"], spec["workdir"], spec["threads"])
    info["source"] = "torchvision, random seeded weights, BatchNorm calibrated, legacy exporter (opset 17)"
    return info


def run_prepare(model: str, args, workdir: str) -> dict:
    threads = max(args.threads, 2) if args.device == "cpu" else (os.cpu_count() or 2)  # export only: not timed
    spec = {"model": model, "workdir": workdir, "threads": threads}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--prepare-child", json.dumps(spec)],
                          capture_output=True, text=True, env=child_env(args))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"prepare exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(lines[-1])


def child_env(args) -> dict:
    env = dict(os.environ)
    if args.device == "cpu":
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[k] = str(args.threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: Measured first for every model (phase 1), the rest after (phase 2): a budget cut keeps the targets' numbers.
PRIORITY = ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "gradient")


def job_list(args, batch: int, phase: int = 0) -> list:
    """Jobs of one model and batch; ``phase`` 1: forward + PRIORITY methods, 2: the others, 0: all."""
    jobs = [{"engine": "ort", "method": "forward", "precision": "float32"}] if phase in (0, 1) else []
    methods = [m for m in args.methods if phase == 0 or (m in PRIORITY) == (phase == 1)]
    for m in methods:
        for p in args.precisions:
            if p == "float32" or m in args.fp16_methods:
                jobs.append({"engine": "onnxplain", "method": m, "precision": p})
    for peer in args.peers:
        jobs += [{"engine": peer, "method": m, "precision": "float32"} for m in methods if m in PEER_METHODS[peer]]
    return jobs


def key(r: dict) -> tuple:
    return (r.get("model"), r.get("batch"), r.get("engine"), r.get("method"), r.get("precision", "float32"))


class Run:
    """The results file: loaded (``--resume``), appended to and rewritten after every job."""

    def __init__(self, args):
        self.args = args
        stem = os.path.join(args.out_dir, f"run_all_{args.device}{args.tag}")
        self.paths = {ext: f"{stem}.{ext}" for ext in ("json", "md", "png")}
        self.data = {"meta": {}, "results": []}
        if (args.resume or args.from_json) and os.path.exists(self.paths["json"]):
            with open(self.paths["json"]) as fh:
                self.data = json.load(fh)

    def done(self) -> set:
        return {key(r) for r in self.data["results"] if "median_s" in r}

    def add(self, rec: dict) -> None:
        self.data["results"] = [r for r in self.data["results"] if key(r) != key(rec)] + [rec]
        self.save()

    def save(self, draw: bool = False) -> None:
        os.makedirs(self.args.out_dir, exist_ok=True)
        _write_atomic(self.paths["json"], json.dumps(self.data, indent=1, default=str))
        _write_atomic(self.paths["md"], harness_report.markdown(self.data))
        if draw:
            harness_report.chart(self.data, self.paths["png"])


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def run_group(run: Run, jobs: list, base: dict, args, deadline: float) -> None:
    """One measuring process for ``jobs``; its JSON lines are recorded as they arrive."""
    spec = dict(base, jobs=jobs, deadline=deadline)
    cmd = [sys.executable, os.path.join(HERE, "harness_measure.py"), json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(args))
    pending = list(jobs)
    timeout = max(30.0, deadline - time.time() + 20.0)
    killer = _Killer(proc, timeout)
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        rec.update(model=base["model"], batch=base["batch"], device=args.device, date=common.now())
        pending = [j for j in pending if (j["engine"], j["method"], j["precision"]) !=
                   (rec.get("engine"), rec.get("method"), rec.get("precision"))]
        _progress(rec)
        run.add(rec)
    proc.wait()
    killer.cancel()
    err = proc.stderr.read()[-3000:]
    for j in pending:  # crashed or killed before reporting
        reason = "killed at the budget deadline" if killer.fired else f"process exit {proc.returncode}: {err}"
        rec = dict(j, model=base["model"], batch=base["batch"], device=args.device, error=reason, date=common.now())
        _progress(rec)
        run.add(rec)


class _Killer:
    def __init__(self, proc, timeout: float):
        import threading

        self.fired = False
        self.timer = threading.Timer(timeout, self._kill, args=(proc,))
        self.timer.daemon = True
        self.timer.start()

    def _kill(self, proc):
        self.fired = True
        proc.kill()

    def cancel(self):
        self.timer.cancel()


def _progress(rec: dict) -> None:
    what = f"{rec['model']} b{rec['batch']} {rec['engine']:9s} {rec['method']:22s} {rec.get('precision', '')}"
    if "median_s" in rec:
        extra = f" compile {rec['compile_s']:.2f} s" if "compile_s" in rec else ""
        mem = rec.get("gpu_delta_mib", rec.get("peak_rss_mib"))
        print(f"[{common.now()}] {what}: {1e3 * rec['median_s']:9.1f} ms (n={rec['n']}){extra}, "
              f"mem {mem:.0f} MiB", flush=True)
    else:
        print(f"[{common.now()}] {what}: {rec.get('skipped') or rec.get('error', '?').splitlines()[0][:200]}",
              flush=True)


def groups(jobs: list, isolate: str) -> list:
    if isolate == "job":
        return [[j] for j in jobs]
    out = {}
    for j in jobs:
        out.setdefault("ort" if j["engine"] in ("ort", "onnxplain") else j["engine"], []).append(j)
    return list(out.values())


def run_config(run: Run, args, batch: int, phase: int, model: str, ctx: dict) -> None:
    """The jobs of one model, batch and phase that the results file does not hold yet."""
    done, prepared, workdir, deadline = ctx["done"], ctx["prepared"], ctx["workdir"], ctx["deadline"]
    jobs = [j for j in job_list(args, batch, phase)
            if (model, batch, j["engine"], j["method"], j["precision"]) not in done]
    if not jobs:
        return
    if time.time() > deadline - 20:
        for j in jobs:
            run.add(dict(j, model=model, batch=batch, device=args.device, skipped="budget"))
        print(f"[{common.now()}] {model} b{batch}: skipped ({len(jobs)} jobs, budget)", flush=True)
        return
    if model not in prepared:
        print(f"[{common.now()}] {model}: export", flush=True)
        if args.wait_idle:
            common.wait_idle(args.wait_idle)
        prepared[model] = run_prepare(model, args, workdir)
        run.data["meta"].setdefault("models_info", {})[model] = {
            k: v for k, v in prepared[model].items() if k not in ("path", "state")}
    info = prepared[model]
    if "error" in info:
        for j in jobs:
            run.add(dict(j, model=model, batch=batch, device=args.device, error=info["error"]))
        print(f"[{common.now()}] {model}: export failed: {info['error'][-300:]}", flush=True)
        return
    base = {"model": model, "batch": batch, "device": args.device, "threads": args.threads,
            "onnx": info["path"], "state": info["state"], "workdir": workdir, "repeats": args.repeats,
            "min_repeats": args.min_repeats, "max_job_s": args.max_job_s,
            "compile_repeats": args.compile_repeats, "chunk_images": args.chunk_images,
            "paired_rounds": args.paired_rounds, "job_reserve_s": 15.0 if args.device == "cuda" else 5.0}  # no job starts later than this
    for group in groups(jobs, args.isolate):
        run_group(run, group, base, args, deadline)


def make_meta(args) -> dict:
    meta = {"date": common.now(), "machine": common.machine(), "git": common.git_state(), "device": args.device,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "threads": args.threads, "batches": args.batches, "models": args.models, "methods": args.methods,
            "peers": args.peers, "missing_peers": args.missing_peers, "precisions": args.precisions,
            "repeats": args.repeats, "min_repeats": args.min_repeats, "max_job_s": args.max_job_s,
            "compile_repeats": args.compile_repeats, "chunk_images": args.chunk_images, "isolate": args.isolate,
            "paired_rounds": args.paired_rounds, "budget_s": args.budget_s, "loadavg_start": list(os.getloadavg())}
    meta["versions"] = common.versions()
    if args.device == "cuda":
        meta["gpu"] = gpu_name()
    return meta


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        return out or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare_child:
        print(json.dumps(prepare_child(json.loads(args.prepare_child))), flush=True)
        return 0
    run = Run(args)
    if args.note:
        run.data["meta"]["note"] = args.note
    if args.from_json:
        run.save(draw=True)
        print(f"wrote {run.paths['md']} and {run.paths['png']}")
        return 0
    t_start = time.time()
    deadline = t_start + args.budget_s if args.budget_s > 0 else t_start + 30 * 24 * 3600
    meta = make_meta(args)
    runs = run.data["meta"].get("runs", []) if args.resume else []
    note = args.note or (run.data["meta"].get("note") if args.resume else None)
    run.data["meta"] = dict(meta, runs=runs + [{k: meta[k] for k in ("date", "command", "git", "machine")}])
    if note:
        run.data["meta"]["note"] = note
    run.save()
    workdir = args.workdir or tempfile.mkdtemp(prefix="onnxplain-run-all-")
    os.makedirs(workdir, exist_ok=True)
    prepared, done = {}, run.done()
    print(f"[{common.now()}] device {args.device}; models {args.models}; batches {args.batches}; peers "
          f"{args.peers or 'none'} (missing: {args.missing_peers or 'none'}); budget {args.budget_s or 'none'} s",
          flush=True)
    try:
        ctx = {"done": done, "prepared": prepared, "workdir": workdir, "deadline": deadline}
        for batch, phase, model in [(b, p, m) for b in args.batches for p in (1, 2) for m in args.models]:
            run_config(run, args, batch, phase, model, ctx)
        run.data["meta"]["wall_s"] = time.time() - t_start
        run.data["meta"]["loadavg_end"] = list(os.getloadavg())
        run.save(draw=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"[{common.now()}] wrote {run.paths['json']}, {run.paths['md']}, {run.paths['png']} "
          f"({time.time() - t_start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
