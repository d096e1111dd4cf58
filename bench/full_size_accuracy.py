#!/usr/bin/env python3
"""Accuracy of onnxplain's gradient and integrated gradients on full-size torchvision models.

Run with the reference virtual environment (torch, torchvision, onnxscript, onnxruntime)::

    /work/venv-ref/bin/pip install --no-deps -e .      # once, from the repository root
    /work/venv-ref/bin/python bench/full_size_accuracy.py                  # every architecture
    /work/venv-ref/bin/python bench/full_size_accuracy.py --arch resnet50  # one (repeatable flag)

For each architecture (random seeded weights, BatchNorm statistics calibrated on random
inputs) at 224x224, batch 2, and each exporter (legacy: ``dynamo=False``, opset 17; dynamo:
``dynamo=True``; both with a dynamic batch axis), it compares

* PyTorch's float32 input gradient of ``sum_n logits[n, target[n]]`` (target = float64 argmax)
  against PyTorch float64: ``e_torch`` (per-sample relative L2 error);
* onnxplain's ``gradient/input`` (compiled model run in ONNX Runtime CPU, float32) against the
  same float64 reference: ``e_ours``;

and the same for integrated gradients (4 steps, right Riemann sum, zero reference). Criterion
per sample: ``e_ours <= max(3 * e_torch, 1e-4)``. Each architecture runs in its own subprocess
(memory is returned between architectures; a crash is recorded, not fatal). ONNX files go to a
temporary directory outside the repository and are deleted afterwards. Results:
``bench/results/full_size_accuracy.{json,md}`` (rewritten after every architecture).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

BATCH = 2
IG_STEPS = 4
PERTURBATIONS = 4          # float32 runs on ulp-perturbed inputs (kink sensitivity)
PERTURB_REL = 2.0 ** -22   # relative size of the input perturbation (about 2 float32 ulps)
THREADS = 2
JSON_PATH = os.path.join(common.RESULTS, "full_size_accuracy.json")
MD_PATH = os.path.join(common.RESULTS, "full_size_accuracy.md")


# ----------------------------------------------------------------------------
# PyTorch references
# ----------------------------------------------------------------------------

def input_grad(model, x, target):
    """d/dx of sum_n model(x)[n, target[n]]."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    out = model(x).gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(out, x)
    return g.detach()


def integrated_gradients(model, x, target, steps=IG_STEPS, points=None):
    """Zero reference, right Riemann sum: x * sum_k grad(k/steps * x) / steps, k = 1..steps.

    ``points``, a list, receives each point's gradient (for the per-point diagnosis).
    """
    import torch

    total = torch.zeros_like(x)
    for k in range(1, steps + 1):
        g = input_grad(model, x * (k / steps), target)
        if points is not None:
            points.append(g.numpy())
        total += g
    return x * total / steps


def references(name: str, model) -> dict:
    """Inputs, float64 targets and the float64 / float32 PyTorch gradients and IG."""
    import torch

    gen = torch.Generator().manual_seed(common.ARCHS[name] + 7)
    x = torch.randn(BATCH, *common.INPUT_SHAPE, generator=gen)
    model64 = copy.deepcopy(model).double()
    t0 = time.perf_counter()
    with torch.no_grad():
        logits64 = model64(x.double())
        logits32 = model(x)
    target = logits64.argmax(dim=1)
    refs = {"x": x.numpy(), "target": target.numpy(), "logits64": logits64.numpy(),
            "logits32": logits32.numpy()}
    refs["grad64"] = input_grad(model64, x.double(), target).numpy()
    refs["grad32"] = input_grad(model, x, target).numpy()
    refs["ig_points64"], refs["ig_points32"] = [], []
    refs["ig64"] = integrated_gradients(model64, x.double(), target, points=refs["ig_points64"]).numpy()
    refs["ig32"] = integrated_gradients(model, x, target, points=refs["ig_points32"]).numpy()
    # Kink sensitivity: PyTorch float32 on inputs perturbed by ~2 ulps, against the unperturbed float64
    # reference. Near a ReLU sign / max-pool near-tie, a float32 computation that rounds differently
    # (as ONNX Runtime does) can take the other branch; this shows how much that alone can cost.
    pg = torch.Generator().manual_seed(common.ARCHS[name] + 99)
    refs["grad32_pert_err"], refs["ig32_pert_err"] = [], []
    for _ in range(PERTURBATIONS):
        xp = (x.double() * (1 + PERTURB_REL * torch.randn(x.shape, generator=pg, dtype=torch.float64))).float()
        refs["grad32_pert_err"].append(common.rel_err_per_sample(input_grad(model, xp, target).numpy(),
                                                                 refs["grad64"]))
        # IG of the perturbed input, against IG64 of x: the x factor's own perturbation is ~1e-7.
        refs["ig32_pert_err"].append(common.rel_err_per_sample(integrated_gradients(model, xp, target).numpy(),
                                                               refs["ig64"]))
    refs["torch_ref_s"] = time.perf_counter() - t0
    refs["argmax32_equals_argmax64"] = bool((logits32.argmax(1) == target).all())
    top2 = np.sort(refs["logits64"], axis=1)[:, -2:]
    refs["top2_margin"] = (top2[:, 1] - top2[:, 0]).tolist()
    del model64
    gc.collect()
    return refs


# ----------------------------------------------------------------------------
# One (architecture, exporter)
# ----------------------------------------------------------------------------

def warm_up_compiler() -> None:
    """Compile the bundled digits model once so lazy imports do not count in the first timing."""
    import onnxplain

    path = os.path.join(os.path.dirname(onnxplain.__file__), "data", "digits_mlp.onnx")
    if os.path.exists(path):
        try:
            onnxplain.compile(path, ["gradient"])
            onnxplain.compile(path, ["integrated_gradients"], steps=2)
        except Exception:  # noqa: BLE001 - only a warm-up
            pass


def timed_compile(path: str, methods, **params):
    """(compiled ModelProto or None, seconds excluding the ONNX load, error text or None)."""
    import onnx
    import onnxplain

    proto = onnx.load(path)  # external data too; not timed
    t0 = time.perf_counter()
    try:
        compiled = onnxplain.compile(proto, methods, **params)
        return compiled, time.perf_counter() - t0, None
    except Exception as exc:  # noqa: BLE001 - recorded in the results
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:4000]


def evaluate(kind: str, exporter: str, path: str, refs: dict, rec: dict, keep: dict) -> None:
    """Compile one method, run it in ONNX Runtime and compare with the float64 reference.

    The gradient session is left in ``keep["gradient"]``; an IG failure is then diagnosed by
    running it at each of the IG points (``ig_point_errors``: per point, per sample, e_ours and
    e_torch of the plain gradient at that point): one point far off while PyTorch float32 is
    not means a kink (ReLU sign or max-pool near-tie resolved differently in float32).
    """
    if kind == "gradient":
        methods, params, out, ref64, ref32 = ["gradient"], {}, "gradient/input", "grad64", "grad32"
    else:
        methods, params = ["integrated_gradients"], {"steps": IG_STEPS, "riemann": "right",
                                                      "reference": "zeros"}
        out, ref64, ref32 = "integrated_gradients/input", "ig64", "ig32"
    res = rec.setdefault(kind, {})
    compiled, secs, err = timed_compile(path, methods, **params)
    res["compile_s"] = round(secs, 3)
    res["e_torch"] = common.rel_err_per_sample(refs[ref32], refs[ref64])
    pert = refs["grad32_pert_err" if kind == "gradient" else "ig32_pert_err"]
    res["e_torch_perturbed"] = pert
    res["e_torch_spread"] = [max([e] + [p[i] for p in pert]) for i, e in enumerate(res["e_torch"])]
    if err:
        res["compile_error"] = err
        res["pass"] = False
        return
    res["compiled_bytes"] = compiled.ByteSize()
    try:
        sess = common.ort_session(compiled, THREADS)
        del compiled
        gc.collect()
        t0 = time.perf_counter()
        logits, got = sess.run(["logits", out], {"input": refs["x"], "target": refs["target"]})
        res["run_s"] = round(time.perf_counter() - t0, 3)
        if kind == "gradient":
            keep["gradient"] = sess
        del sess
    except Exception as exc:  # noqa: BLE001
        res["run_error"] = f"{type(exc).__name__}: {exc}"[:4000]
        res["pass"] = False
        return
    res["logits_rel_err_vs_float64"] = common.rel_err_per_sample(logits, refs["logits64"])
    e_ours = common.rel_err_per_sample(got, refs[ref64])
    res["e_ours"] = e_ours
    res["ratio"] = [o / t if t > 0 else float("inf") for o, t in zip(e_ours, res["e_torch"])]
    res["pass_per_sample"] = [o <= max(3 * t, 1e-4) for o, t in zip(e_ours, res["e_torch"])]
    res["pass"] = all(res["pass_per_sample"])
    res["pass_kink_aware"] = all(o <= max(3 * t, 1e-4) for o, t in zip(e_ours, res["e_torch_spread"]))
    if kind != "gradient" and not res["pass"] and keep.get("gradient") is not None:
        pts = []
        for k in range(1, IG_STEPS + 1):
            xk = (refs["x"].astype(np.float64) * (k / IG_STEPS)).astype(np.float32)
            gk = keep["gradient"].run(["gradient/input"], {"input": xk, "target": refs["target"]})[0]
            pts.append({"alpha": k / IG_STEPS,
                        "e_ours": common.rel_err_per_sample(gk, refs["ig_points64"][k - 1]),
                        "e_torch": common.rel_err_per_sample(refs["ig_points32"][k - 1],
                                                             refs["ig_points64"][k - 1])})
        res["ig_point_errors"] = pts


def run_exporter(name: str, exporter: str, model, refs: dict, tmp: str) -> dict:
    """Export, verify the export, evaluate gradient and IG; never raises."""
    rec = {"arch": name, "exporter": exporter}
    path = os.path.join(tmp, f"{name}_{exporter}.onnx")
    try:
        t0 = time.perf_counter()
        if exporter == "legacy":
            common.export_legacy(model, path)
        else:  # weights as external data next to the file: onnxplain's path loader is exercised below
            common.export_dynamo(model, path, external_data=True)
        rec["export_s"] = round(time.perf_counter() - t0, 2)
        rec["exported_ir_version"] = common.cap_ir_version(path)
        rec["file_bytes"] = common.file_bytes(path)
        rec["external_data"] = os.path.exists(path + ".data")
        sess = common.ort_session(path, THREADS)
        logits = sess.run(["logits"], {"input": refs["x"]})[0]
        del sess
        rec["export_logits_rel_err_vs_float64"] = common.rel_err_per_sample(logits, refs["logits64"])
        rec["export_logits_rel_err_vs_torch32"] = common.rel_err_per_sample(logits, refs["logits32"])
    except Exception as exc:  # noqa: BLE001
        rec["export_error"] = f"{type(exc).__name__}: {exc}"[:4000]
        print(f"[{name}/{exporter}] export failed: {exc}", file=sys.stderr, flush=True)
        return rec
    keep = {}
    for kind in ("gradient", "integrated_gradients"):
        try:
            evaluate(kind, exporter, path, refs, rec, keep)
        except Exception as exc:  # noqa: BLE001
            rec.setdefault(kind, {})["error"] = f"{type(exc).__name__}: {traceback.format_exc()}"[-4000:]
        gc.collect()
        r = rec.get(kind, {})
        print(f"[{name}/{exporter}] {kind}: compile {r.get('compile_s')} s, e_torch {r.get('e_torch')}, "
              f"e_ours {r.get('e_ours')}, pass {r.get('pass')} "
              f"{r.get('compile_error') or r.get('run_error') or r.get('error') or ''}"[:3000], flush=True)
    keep.clear()
    if exporter == "dynamo":  # compile straight from the path (external data resolved by onnxplain)
        try:
            import onnxplain

            t0 = time.perf_counter()
            compiled = onnxplain.compile(path, ["gradient"])
            rec["compile_from_path_s_incl_load"] = round(time.perf_counter() - t0, 3)
            sess = common.ort_session(compiled, THREADS)
            del compiled
            got = sess.run(["gradient/input"], {"input": refs["x"], "target": refs["target"]})[0]
            rec["compile_from_path_e_ours"] = common.rel_err_per_sample(got, refs["grad64"])
            del sess
        except Exception as exc:  # noqa: BLE001
            rec["compile_from_path_error"] = f"{type(exc).__name__}: {exc}"[:4000]
    return rec


def worker(name: str, out_json: str, exporters) -> None:
    """Everything for one architecture; writes a JSON list of records to ``out_json``."""
    import torch

    torch.set_num_threads(THREADS)
    warm_up_compiler()
    info = {"arch": name}
    t0 = time.perf_counter()
    model = common.build(name)
    info["params"] = sum(p.numel() for p in model.parameters())
    info["batchnorms"] = common.calibrate_batchnorm(model, common.ARCHS[name])
    probe = torch.randn(8, *common.INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    std, rescaled, finite = common.ensure_nondegenerate(model, probe)
    info.update(logit_std=std, rescaled_last_layer=rescaled, logits_finite=finite,
                prepare_s=round(time.perf_counter() - t0, 2))
    refs = references(name, model)
    info.update(torch_ref_s=round(refs["torch_ref_s"], 2), target=refs["target"].tolist(),
                top2_margin=refs["top2_margin"], argmax32_equals_argmax64=refs["argmax32_equals_argmax64"])
    print(f"[{name}] params {info['params']}, BN {info['batchnorms']}, logit std {std:.3g}"
          f"{' (rescaled)' if rescaled else ''}, refs {info['torch_ref_s']} s", flush=True)
    records = []
    tmp = tempfile.mkdtemp(prefix=f"onnxplain-bench-{name}-")
    try:
        for exporter in exporters:
            rec = dict(info)
            rec.update(run_exporter(name, exporter, model, refs, tmp))
            records.append(rec)
            for f in os.listdir(tmp):
                os.remove(os.path.join(tmp, f))
            with open(out_json, "w") as fh:
                json.dump(records, fh)
            gc.collect()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------
# Driver and report
# ----------------------------------------------------------------------------

def fmt_list(values, spec=".1e") -> str:
    return ", ".join(format(v, spec) for v in values) if values else "–"


def markdown(records: list, meta: dict) -> str:
    lines = [
        "# onnxplain accuracy on full-size torchvision models",
        "",
        f"Generated by `bench/full_size_accuracy.py` on {meta['date']} ({meta['machine']}; torch "
        f"{meta['torch']}, torchvision {meta['torchvision']}, onnx {meta['onnx']}, onnxruntime "
        f"{meta['onnxruntime']}, onnxplain {meta['onnxplain']}).",
        "",
        f"Random seeded weights, BatchNorm statistics calibrated on random inputs, 224×224, batch {BATCH}, "
        "target = float64 argmax (fed through the `target` input). Errors are per-sample relative L2 "
        "errors against PyTorch float64 (sample 0, sample 1). `e_torch`: PyTorch float32; `e_ours`: the "
        "compiled model in ONNX Runtime CPU (float32). Pass: `e_ours <= max(3·e_torch, 1e-4)` for every "
        f"sample. IG: {IG_STEPS} steps, right Riemann sum, zero reference. Compile times exclude loading the "
        "ONNX file (and one warm-up compile of a tiny model per process). Legacy: `dynamo=False`, opset 17, "
        "weights embedded; dynamo: `dynamo=True`, weights as external data next to the file.",
        "",
        f"`e_torch spread`: the largest of `e_torch` and the errors of PyTorch float32 run on {PERTURBATIONS} "
        f"copies of the input perturbed by a relative {PERTURB_REL:.1e} (about 2 float32 ulps), all against the "
        "unperturbed float64 reference. It measures how close the sample is to kinks (ReLU/ReLU6/hardswish "
        "sign changes, max-pool near-ties): a float32 forward that rounds differently, as ONNX Runtime's "
        "does, may take the other branch there and err by as much. `kink-aware pass`: "
        "`e_ours <= max(3·e_torch spread, 1e-4)` for every sample. "
        f"Source: onnxplain at {meta.get('git', '?')}.",
        "",
        "| arch | exporter | export s | gradient compile s | gradient e_torch | gradient e_ours | ratio | pass "
        "| e_torch spread | kink-aware pass "
        "| IG compile s | IG e_torch | IG e_ours | ratio | pass | IG e_torch spread | kink-aware pass | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        cells = [r["arch"], r.get("exporter", "–"), str(r.get("export_s", "–"))]
        notes = []
        for kind in ("gradient", "integrated_gradients"):
            k = r.get(kind, {})
            cells += [str(k.get("compile_s", "–")), fmt_list(k.get("e_torch")), fmt_list(k.get("e_ours")),
                      fmt_list(k.get("ratio"), ".3g"),
                      ("PASS" if k.get("pass") else "**FAIL**") if k else "–",
                      fmt_list(k.get("e_torch_spread")),
                      ("PASS" if k.get("pass_kink_aware") else "**FAIL**") if "pass_kink_aware" in k else "–"]
            err = k.get("compile_error") or k.get("run_error") or k.get("error")
            if err:
                notes.append(f"{kind}: {err.splitlines()[0][:300]}")
            for pt in k.get("ig_point_errors", []):
                bad = [i for i, (o, t) in enumerate(zip(pt["e_ours"], pt["e_torch"])) if o > max(3 * t, 1e-4)]
                if bad:
                    notes.append(f"IG point α={pt['alpha']}: gradient e_ours {fmt_list(pt['e_ours'])} "
                                 f"vs e_torch {fmt_list(pt['e_torch'])} (samples {bad})")
        if r.get("export_error"):
            notes.append("export: " + r["export_error"].splitlines()[0][:300])
        if r.get("worker_error"):
            notes.append("worker: " + r["worker_error"][:300])
        if r.get("compile_from_path_error"):
            notes.append("compile from path: " + r["compile_from_path_error"].splitlines()[0][:200])
        if r.get("rescaled_last_layer"):
            notes.append("last layer rescaled")
        cells.append("; ".join(notes).replace("|", "\\|") or "")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for kind, label in (("gradient", "gradient"), ("integrated_gradients", "integrated gradients")):
        rows = [r.get(kind, {}) for r in records]
        n = len(rows)
        lines.append(f"- {label}: {sum(bool(k.get('pass')) for k in rows)}/{n} pass, "
                     f"{sum(bool(k.get('pass_kink_aware')) for k in rows)}/{n} kink-aware pass, "
                     f"{sum(bool(k.get('compile_error') or k.get('run_error') or k.get('error')) for k in rows)} "
                     "compile/run errors.")
    lines += ["", "## Per architecture", "",
              "| arch | params | BN | logit std | top-2 margin (float64) | ONNX logits err vs float64 "
              "(legacy; dynamo) | file MB | torch refs s | dynamo compile-from-path s (incl. load) |",
              "|---|---|---|---|---|---|---|---|---|"]
    by_arch = {}
    for r in records:
        by_arch.setdefault(r["arch"], []).append(r)
    for arch, recs in by_arch.items():
        r0 = recs[0]
        errs = "; ".join(fmt_list(r.get("export_logits_rel_err_vs_float64")) for r in recs)
        mb = max((r.get("file_bytes", 0) for r in recs), default=0) / 1e6
        path_s = next((str(r["compile_from_path_s_incl_load"]) for r in recs
                       if "compile_from_path_s_incl_load" in r), "–")
        lines.append(f"| {arch} | {r0.get('params', '–')} | {r0.get('batchnorms', '–')} | "
                     f"{r0.get('logit_std', float('nan')):.3g} | {fmt_list(r0.get('top2_margin'), '.2g')} | "
                     f"{errs} | {mb:.1f} | {r0.get('torch_ref_s', '–')} | {path_s} |")
    return "\n".join(lines) + "\n"


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import torchvision

    import onnxplain

    try:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        git = f"{head}" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    except OSError:
        git = "?"
    return {"git": git, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {THREADS} threads",
            "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxplain": getattr(onnxplain, "__version__", "?")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(common.ARCHS),
                    help="architecture to run (repeatable; default: all)")
    ap.add_argument("--exporter", action="append", choices=["legacy", "dynamo"],
                    help="exporter (repeatable; default: both)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per architecture")
    ap.add_argument("--json", default=JSON_PATH)
    ap.add_argument("--md", default=MD_PATH)
    ap.add_argument("--from-json", action="store_true",
                    help="only rewrite the Markdown from an existing --json file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    exporters = args.exporter or ["legacy", "dynamo"]
    if args.worker:
        worker(args.worker, args.worker_out, exporters)
        return 0
    if args.from_json:
        with open(args.json) as fh:
            data = json.load(fh)
        with open(args.md, "w") as fh:
            fh.write(markdown(data["records"], data["meta"]))
        return 0
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    meta = versions()
    records = []
    t_all = time.perf_counter()
    for name in args.arch or list(common.ARCHS):
        fd, out = tempfile.mkstemp(prefix=f"onnxplain-bench-{name}-", suffix=".json")
        os.close(fd)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--worker-out", out]
        for e in exporters:
            cmd += ["--exporter", e]
        t0 = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            proc = subprocess.run(cmd, timeout=args.timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        try:
            with open(out) as fh:
                got = json.load(fh)
        except (OSError, ValueError):
            got = []
        os.remove(out)
        if rc != 0:
            done = {r.get("exporter") for r in got}
            for e in exporters:
                if e not in done:
                    got.append({"arch": name, "exporter": e, "worker_error": f"worker exit status {rc}"})
        for r in got:
            r["arch_wall_s"] = round(time.perf_counter() - t0, 1)
        records += got
        meta["total_s"] = round(time.perf_counter() - t_all, 1)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "records": records}, fh, indent=1)
        with open(args.md, "w") as fh:
            fh.write(markdown(records, meta))
        print(f"=== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"wrote {args.json} and {args.md} ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
