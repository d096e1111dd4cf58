"""Occlusion (8x8 patches, stride 8) of one 224x224 image: wall time, peak memory, ratio to one forward pass.

Each configuration runs in a fresh process (``--worker``) so that its peak resident set
(``VmHWM`` from /proc/self/status) is its own. Measured:

* ``forward``: one ``session.run`` of the original model on one image (batch 1), median;
* ``occlusion``: ``onnxplain.Explainer(model, "occlusion", patch=8, max_batch=B).explain(x)``
  (784 occluded copies + 1 unoccluded pass, in batches of B), session creation excluded;
* ``in-graph``: a prototype that compiles the occlusion into the graph (the window masks
  are built inside the model from the window corners, ``Where(mask, 0, x)`` expands the
  batch, a ``Gather`` keeps the target logit) and is fed chunks of B corners, to see
  whether building the occluded batch inside ONNX Runtime pays off on CPU.

Usage (package venv; torch is only needed to export the stand-in model)::

    python bench/bench_occlusion.py [--model onnxplain/data/efficientnet_lite0.onnx] [--batches 1,8,32,64]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
DEFAULT_MODEL = os.path.join(ROOT, "onnxplain", "data", "efficientnet_lite0.onnx")


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def image(shape, proto=None) -> np.ndarray:
    """The bundled photo ``chelsea.jpg`` resized to the input, preprocessed as the model's metadata says
    (``onnxplain.preprocess``: pixel_scale, pixel_offset); a smooth synthetic image when it is absent."""
    c, h, w = shape
    path = os.path.join(ROOT, "onnxplain", "data", "images", "chelsea.jpg")
    meta = {p.key: p.value for p in proto.metadata_props} if proto is not None else {}
    if os.path.isfile(path) and c == 3:
        from PIL import Image

        pix = np.moveaxis(np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR),
                                     np.float32), -1, 0)
        pre = json.loads(meta.get("onnxplain.preprocess", "{}"))
        return (pix * pre.get("pixel_scale", 1 / 255) + pre.get("pixel_offset", 0.0)).astype(np.float32)[None]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(c)]).astype(np.float32)[None]


def ingraph_model(proto, patch: int):
    """The prototype: inputs x [1,C,H,W], corners r0/c0 [B] int64, target [1] int64 -> score [B, 1]."""
    import onnx
    from onnx import TensorProto, helper

    from onnxplain.agnostic.batching import _explained_tensor

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inp = g.input[0]
    name = inp.name
    _, c, h, w = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    logit = _explained_tensor(m, g.output[0].name, True, "model")
    for n in g.node:
        n.input[:] = ["occ/xo" if i == name else i for i in n.input]
    cst = lambda nm, v: helper.make_node("Constant", [], [nm], value=onnx.numpy_helper.from_array(  # noqa: E731
        np.asarray(v, np.int64), nm))
    pre = [cst("occ/hr", np.arange(h)), cst("occ/wr", np.arange(w)), cst("occ/p", patch),
           cst("occ/ax1", [1]), cst("occ/ax13", [1, 3]), cst("occ/ax12", [1, 2]),
           helper.make_node("Constant", [], ["occ/zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]))]
    for axis, rng in (("r", "occ/hr"), ("c", "occ/wr")):
        pre += [helper.make_node("Unsqueeze", [f"{axis}0", "occ/ax1"], [f"occ/{axis}u"]),
                helper.make_node("Add", [f"occ/{axis}u", "occ/p"], [f"occ/{axis}e"]),
                helper.make_node("GreaterOrEqual", [rng, f"occ/{axis}u"], [f"occ/{axis}ge"]),
                helper.make_node("Less", [rng, f"occ/{axis}e"], [f"occ/{axis}lt"]),
                helper.make_node("And", [f"occ/{axis}ge", f"occ/{axis}lt"], [f"occ/{axis}in"])]
    pre += [helper.make_node("Unsqueeze", ["occ/rin", "occ/ax13"], ["occ/r4"]),
            helper.make_node("Unsqueeze", ["occ/cin", "occ/ax12"], ["occ/c4"]),
            helper.make_node("And", ["occ/r4", "occ/c4"], ["occ/mask"]),
            helper.make_node("Where", ["occ/mask", "occ/zero", name], ["occ/xo"])]
    post = [helper.make_node("Gather", [logit, "target"], ["score"], axis=1)]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    g.input.extend([helper.make_tensor_value_info("r0", TensorProto.INT64, ["B"]),
                    helper.make_tensor_value_info("c0", TensorProto.INT64, ["B"]),
                    helper.make_tensor_value_info("target", TensorProto.INT64, [1])])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["B", 1]))
    return m, (c, h, w)


def worker(cfg: dict) -> dict:
    import onnx

    import onnxplain
    from onnxplain.runtime.session import make_session

    threads = cfg["threads"]
    proto = onnx.load(cfg["model"])
    shape = tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:])
    x = image(shape, proto)
    out = {"config": cfg["kind"], "max_batch": cfg.get("batch")}
    if cfg["kind"] == "forward":
        sess = make_session(proto, ["CPUExecutionProvider"], threads)
        name = sess.get_inputs()[0].name
        feeds = {name: np.repeat(x, cfg.get("batch", 1), 0)}
        out["top_class"] = int(sess.run(None, feeds)[0].reshape(feeds[name].shape[0], -1)[0].argmax())
        times, cpu0, t0 = [], cpu_seconds(), time.perf_counter()
        for _ in range(cfg["repeat"]):
            t = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - t)
        out.update(runs=times, median_s=float(np.median(times)),
                   cpu_share=(cpu_seconds() - cpu0) / ((time.perf_counter() - t0) * threads))
    elif cfg["kind"] == "occlusion":
        t = time.perf_counter()
        exp = onnxplain.Explainer(proto, "occlusion", patch=8, max_batch=cfg["batch"], threads=threads,
                                  progress=False, providers=["CPUExecutionProvider"])
        out["setup_s"] = time.perf_counter() - t
        exp.agnostic.runner.scores({exp._single_input(): x})  # warm-up, as for the forward timing
        out["rss_before_mib"] = vm_hwm_mib()
        cpu0, t = cpu_seconds(), time.perf_counter()
        amap = exp.explain(x)["occlusion"]
        wall = time.perf_counter() - t
        out.update(runs=[wall], median_s=wall, cpu_share=(cpu_seconds() - cpu0) / (wall * threads))
        np.save(cfg["save"], amap) if cfg.get("save") else None
    else:  # in-graph prototype
        model, (c, h, w) = ingraph_model(proto, 8)
        sess = make_session(model, ["CPUExecutionProvider"], threads)
        corners = np.array([(r, q) for r in range(0, h, 8) for q in range(0, w, 8)], np.int64)
        base_sess = make_session(proto, ["CPUExecutionProvider"], threads)
        name = base_sess.get_inputs()[0].name
        sess.run(None, {name: x, "r0": corners[:1, 0], "c0": corners[:1, 1], "target": np.zeros(1, np.int64)})
        from onnxplain.agnostic.batching import ModelRunner
        runner = ModelRunner(proto, providers=["CPUExecutionProvider"], threads=threads)
        out["rss_before_mib"] = vm_hwm_mib()
        cpu0, t = cpu_seconds(), time.perf_counter()
        base, cls = runner.base_scores({name: x}, None)
        b = cfg["batch"]
        scores = np.concatenate([sess.run(None, {name: x, "r0": corners[s:s + b, 0], "c0": corners[s:s + b, 1],
                                                 "target": cls})[0][:, 0] for s in range(0, len(corners), b)])
        amap = np.zeros((h, w))
        for (r, q), s in zip(corners, scores):
            amap[r:r + 8, q:q + 8] = np.float64(base[0, cls[0]]) - np.float64(s)
        wall = time.perf_counter() - t
        out.update(runs=[wall], median_s=wall, cpu_share=(cpu_seconds() - cpu0) / (wall * threads))
        if cfg.get("compare"):
            ref = np.load(cfg["compare"])[0, 0]
            out["max_abs_diff_vs_explainer"] = float(np.abs(amap - ref).max())
            out["max_abs_map"] = float(np.abs(ref).max())
    out["peak_rss_mib"] = vm_hwm_mib()
    out["loadavg"] = list(os.getloadavg())
    return out


def spawn(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the ONNX model (input [N,3,224,224])")
    ap.add_argument("--label", default=None, help="model name in the report")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--batches", default="1,8,32,64", help="max_batch values to time")
    ap.add_argument("--repeat", type=int, default=2, help="runs per occlusion configuration (best and all kept)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "occlusion"), help="results prefix (.json, .md)")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="only merge the JSON results of earlier runs "
                    "(e.g. from other machines) into --out, one section per run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if not os.path.isfile(args.model):
        sys.exit(f"{args.model}: not found (pass --model)")
    batches = [int(b) for b in args.batches.split(",")]
    base = {"model": os.path.abspath(args.model), "threads": args.threads}
    tmp = os.path.join(RESULTS, ".occlusion_map.npy")
    rows = {"forward": spawn(dict(base, kind="forward", batch=1, repeat=30)),
            "forward_b32": spawn(dict(base, kind="forward", batch=32, repeat=5)), "occlusion": [], "ingraph": []}
    for b in batches:
        for k in range(args.repeat):
            rows["occlusion"].append(spawn(dict(base, kind="occlusion", batch=b, save=tmp if b == 32 and k == 0
                                                else None)))
            print(json.dumps(rows["occlusion"][-1])[:300], file=sys.stderr)
            if b in (8, 32):
                rows["ingraph"].append(spawn(dict(base, kind="ingraph", batch=b, compare=tmp if b == 32 else None)))
                print(json.dumps(rows["ingraph"][-1])[:300], file=sys.stderr)
    if os.path.exists(tmp):
        os.unlink(tmp)
    write(args, rows)


def write(args, rows) -> None:
    import onnxruntime

    import onnxplain

    label = args.label or os.path.splitext(os.path.basename(args.model))[0]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model": label,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads,
            "onnxruntime": onnxruntime.__version__, "onnxplain": f"{onnxplain.__version__} at {rev.strip()}"}
    lines = render(meta, rows)
    with open(args.out + ".json", "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def combine(paths: list, out: str) -> None:
    runs = []
    for p in paths:
        with open(p) as fh:
            runs.append(json.load(fh))
    lines = ["# Occlusion benchmark (8x8 patches, stride 8, one 224x224 image)", "",
             "Each section is one run of `bench/bench_occlusion.py` (merged with `--combine`).", ""]
    for run in runs:
        lines += render(run["meta"], run["rows"], "##") + [""]
    with open(out + ".json", "w") as fh:
        json.dump({"runs": runs}, fh, indent=1)
    with open(out + ".md", "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))


def render(meta: dict, rows: dict, level: str = "#") -> list:
    """The Markdown report of one run (``meta``, ``rows`` as stored in the JSON)."""
    label = meta["model"]
    fwd = rows["forward"]["median_s"]
    per_img_b32 = rows["forward_b32"]["median_s"] / 32
    lines = [f"{level} Occlusion: one 224x224 image, 8x8 patches, stride 8 ({label}, {meta['threads']} threads, "
             f"{meta['machine']})", "",
             f"Generated by `bench/bench_occlusion.py` on {meta['date']} ({meta['machine']}; onnxruntime "
             f"{meta['onnxruntime']}, onnxplain {meta['onnxplain']}). ONNX Runtime CPU, {meta['threads']} intra-op "
             "threads, each configuration in a fresh process. 784 occluded copies + 1 unoccluded pass. Input: "
             f"`onnxplain/data/images/chelsea.jpg` resized to 224x224 (top class {rows['forward'].get('top_class')}),"
             " reference 0, explained class: the top one.", "",
             f"One forward pass (batch 1): **{fwd * 1e3:.1f} ms** (median of 30; own CPU share "
             f"{rows['forward']['cpu_share']:.2f}); per image in a batch of 32: {per_img_b32 * 1e3:.1f} ms, so "
             f"the best possible occlusion time is about 785 x {per_img_b32 * 1e3:.1f} ms = "
             f"{785 * per_img_b32:.2f} s (ratio {785 * per_img_b32 / fwd:.0f} to one batch-1 forward pass).", "",
             "| method | max_batch | wall s (best) | all runs s | ratio to one forward pass | peak RSS MiB | "
             "RSS before MiB | own CPU share | load average (1 min) |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, title in (("occlusion", "Explainer occlusion"), ("ingraph", "in-graph prototype")):
        by_batch = {}
        for r in rows[kind]:
            by_batch.setdefault(r["max_batch"], []).append(r)
        for b, rs in by_batch.items():
            best = min(rs, key=lambda r: r["median_s"])
            runs = ", ".join(f"{r['median_s']:.2f}" for r in rs)
            lines.append(f"| {title} | {b} | {best['median_s']:.2f} | {runs}"
                         f" | {best['median_s'] / fwd:.0f} | {max(r['peak_rss_mib'] for r in rs):.0f} | "
                         f"{best.get('rss_before_mib', float('nan')):.0f} | {best['cpu_share']:.2f} | "
                         f"{best['loadavg'][0]:.1f} |")
    diff = [r for r in rows["ingraph"] if "max_abs_diff_vs_explainer" in r]
    if diff:
        lines += ["", f"In-graph prototype map vs Explainer map (max_batch 32): max |difference| "
                  f"{diff[0]['max_abs_diff_vs_explainer']:.3g} (max |map| {diff[0]['max_abs_map']:.3g})."]
    share = min(r["cpu_share"] for k in ("occlusion", "ingraph") for r in rows[k])
    contention = ("close to 1 in every run: no other process competed for the CPUs" if share > 0.9 else
                  f"as low as {share:.2f}: other processes competed for the CPUs (several engineers share "
                  "this machine), so these wall times are upper bounds, several times the uncontended ones")
    lines += ["", "*peak RSS*: `VmHWM` of the measuring process (Python, ONNX Runtime, the session with its weights, "
              "the occluded batch and ONNX Runtime's activation arena); *RSS before*: the same after session "
              "creation and one warm-up pass, before occlusion. *own CPU share*: this process's CPU time / "
              f"(wall time x threads); {contention}."]
    return lines


if __name__ == "__main__":
    main()
