#!/usr/bin/env python3
"""Accuracy of onnxplain's compiled Zennit composites on full-size torchvision models, against Zennit 0.5.1.

Run with the reference virtual environment (torch, torchvision, zennit, onnxruntime)::

    /work/venv-ref/bin/pip install --no-deps -e .          # once, from the repository root
    /work/venv-ref/bin/python bench/lrp_full_size.py                      # every architecture
    /work/venv-ref/bin/python bench/lrp_full_size.py --arch resnet50      # one (repeatable flag)

For each architecture (random seeded weights, BatchNorm statistics calibrated on random inputs as in
``bench/common.py``) at 224x224, batch 2, the model is exported with the legacy exporter
(``dynamo=False``, opset 17, dynamic batch) to a temporary directory outside the repository, and the
five Zennit composites are compiled into **one** model::

    onnxplain.compile(proto, ["lrp.epsilon_plus", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box",
                              "lrp.epsilon_alpha2_beta1", "lrp.epsilon_alpha2_beta1_flat"],
                      params={"lrp.epsilon_gamma_box.low": -3.0, "lrp.epsilon_gamma_box.high": 3.0})

which runs in ONNX Runtime CPU (float32, 2 threads) with ``target`` = the float64 argmax. onnxplain
seeds the relevance with the logit's value, Zennit with 1, so our maps are divided by the explained
logit (the compiled model's own ``logits`` output at the target).

Zennit references (``zennit.attribution.Gradient``, ``attr_output`` = one-hot(target)): EpsilonPlus,
EpsilonPlusFlat, EpsilonGammaBox(low=-3, high=3, elementwise tensors), EpsilonAlpha2Beta1,
EpsilonAlpha2Beta1Flat with Zennit's defaults, each with the architecture's canonizers and with the
merged BatchNorms made exact identities (the ``_exactbn`` variant of ``models/make_zennit_refs.py``;
Zennit's merge leaves the BN epsilon in place, the exporter folds exactly), in float64 and float32.
Canonizers (see ``models/ZENNIT_NOTES.md`` section 7; the ``_uniform`` choices where Zennit's stock
treatment of a functional op differs from onnxplain's real-graph treatment):

* vgg16, vgg16_bn: ``VGGCanonizer``;
* resnet18, resnet50: ``ResNetCanonizer`` (BN merge + ``Sum`` module for every residual add);
* densenet121: ``NamedMergeBatchNorm`` (conv0<-norm0, each dense layer's conv1<-norm2) +
  ``DenseNetHeadCanonizer`` (head ``F.relu``/``F.adaptive_avg_pool2d`` as modules -> Pass/Norm);
* googlenet (``aux_logits=False``, ``init_weights=True``): ``SequentialMergeBatchNorm``;
* regnet_y_400mf: ``ResNetCanonizer`` (merge part) + ``RegNetSumCanonizer`` (residual add as a
  ``Sum`` module -> Norm). Its squeeze-excitation ``Mul`` is functional (gradient) in Zennit and gets
  the gradient in onnxplain too; its ``Sigmoid`` module is Pass in both.

Per sample: ``e_zennit`` = ||Z32 - Z64|| / ||Z64|| (Zennit float32 vs float64) and ``e_ours`` =
||ours/logit - Z64|| / ||Z64||. Criterion: ``e_ours <= max(3 e_zennit, 1e-4)``.

Diagnosis (always run, reported per architecture): the ReLU pre-activations and max-pool inputs of the
compiled model's forward pass are exposed as extra graph outputs (the maps are checked to be
unchanged by that) and compared with the same tensors of the float64 PyTorch forward (forward hooks on
the canonized model; matched by shape and value): the number of ReLU units whose sign differs
(``relu flips``) and of max-pool windows whose winner differs (``maxpool flips``), for ONNX Runtime
float32 and for PyTorch float32. For a failing composite, Zennit float32 is also run on
``PERTURBATIONS`` copies of the input perturbed by ~2 float32 ulps (``e_zennit spread``: the largest
error against the unperturbed float64 reference), and Zennit float64 on one perturbed copy
(``e64 perturbed``: how discontinuous the float64 map itself is at x). A failure with flips in ORT's
forward and ``e_ours`` within 3x that spread is a float32 branch flip (kink), not a wrong rule.

Results: ``bench/results/lrp_full_size.{json,md}`` (rewritten after every architecture).
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
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

BATCH = 2
THREADS = 2
NUM_CLASSES = 1000
PERTURBATIONS = 3
PERTURB_REL = 2.0 ** -22
BOX_LOW, BOX_HIGH = -3.0, 3.0
LOCALIZE_MAX = 2                 # composites localized per architecture (the worst ratios first)
LOCALIZE_MAX_PARAMS = 60_000_000  # VGG16 (138M) skipped: every tensor of the graph is fetched
JSON_PATH = os.path.join(common.RESULTS, "lrp_full_size.json")
MD_PATH = os.path.join(common.RESULTS, "lrp_full_size.md")

#: name -> (seed, canonizer family of models/make_zennit_refs.py). Seeds of bench/common.py where it has
#: the architecture; new ones otherwise.
ARCHS = {
    "resnet18": (122, "resnet"),
    "resnet50": (common.ARCHS["resnet50"], "resnet"),
    "vgg16": (common.ARCHS["vgg16"], "vgg"),
    "googlenet": (common.ARCHS["googlenet"], "googlenet"),
    "regnet_y_400mf": (common.ARCHS["regnet_y_400mf"], "regnet"),
    "densenet121": (common.ARCHS["densenet121"], "densenet"),
    "vgg16_bn": (121, "vgg"),
}
COMPOSITES = {"EpsilonPlus": "lrp.epsilon_plus", "EpsilonPlusFlat": "lrp.epsilon_plus_flat",
              "EpsilonGammaBox": "lrp.epsilon_gamma_box", "EpsilonAlpha2Beta1": "lrp.epsilon_alpha2_beta1",
              "EpsilonAlpha2Beta1Flat": "lrp.epsilon_alpha2_beta1_flat"}
COMPILE_PARAMS = {"lrp.epsilon_gamma_box.low": BOX_LOW, "lrp.epsilon_gamma_box.high": BOX_HIGH}


def zennit_refs_module():
    """``models/make_zennit_refs.py`` (canonizers, composite factory, exact-BN canonizer)."""
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "models"))
    import make_zennit_refs as mzr  # noqa: E402

    assert (mzr.BOX_LOW, mzr.BOX_HIGH) == (BOX_LOW, BOX_HIGH)
    return mzr


def build(name: str):
    """As ``common.build`` (same seeds where common has the architecture), eval mode."""
    import torch
    import torchvision

    if name in common.ARCHS:
        return common.build(name)
    torch.manual_seed(ARCHS[name][0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, name)(weights=None)
    model.eval()
    return model


def export_double(model, path: str) -> None:
    """Legacy export of a float64 copy of ``model`` (same settings as ``common.export_legacy``)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(copy.deepcopy(model).double(), (torch.randn(BATCH, *common.INPUT_SHAPE, dtype=torch.float64),),
                          path, dynamo=False, opset_version=common.LEGACY_OPSET, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    common.cap_ir_version(path)


def rel_err(a, b) -> list:
    return common.rel_err_per_sample(a, b)


def fl(values, spec=".1e") -> str:
    return ", ".join(format(v, spec) for v in values) if values else "–"


def flag(c: dict) -> bool:
    """Diagnose further: a failure, a ratio above 3 (passing by the 1e-4 floor) or e_ours above 1e-3."""
    return not c["pass"] or max(c["ratio"]) > 3 or max(c["e_ours"]) > 1e-3


# ----------------------------------------------------------------------------
# Zennit
# ----------------------------------------------------------------------------

def canonizers(mzr, family: str, model, exact_bn: bool = True) -> list:
    return mzr.canonizers_for(family, model, True) + ([mzr.ExactIdentityBatchNorm()] if exact_bn else [])


def zennit_attr(mzr, family: str, model32, x, target, cname: str, dtype):
    """(logits under the composite, relevance) of Zennit composite ``cname`` in ``dtype``, exact BN."""
    import torch
    from zennit.attribution import Gradient

    model = copy.deepcopy(model32).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    xx = x.to(dtype)
    comp = mzr.make_composite(cname, canonizers(mzr, family, model), xx)
    onehot = torch.zeros(len(xx), NUM_CLASSES, dtype=dtype)
    onehot[torch.arange(len(xx)), target] = 1
    with Gradient(model=model, composite=comp) as attributor:
        out, rel = attributor(xx.clone(), onehot)
    del model
    return out.detach().double().numpy(), rel.detach().double().numpy()


def torch_preacts(mzr, family: str, model32, x, dtype) -> list:
    """Forward of the canonized model (exact BN) in ``dtype``; inputs of ReLU/MaxPool modules and
    outputs of BatchNorm modules (pre-activations of functional ReLUs), in call order, as float64."""
    import torch
    from torch import nn

    model = copy.deepcopy(model32).to(dtype)
    handles = []
    for c in canonizers(mzr, family, model):
        handles += c.apply(model)
    found, hooks = [], []

    def pre(mod, inp):
        found.append((type(mod).__name__ + ".in", inp[0].detach().double().numpy().copy()))

    def post(mod, inp, out):
        found.append((type(mod).__name__ + ".out", out.detach().double().numpy().copy()))

    for mod in model.modules():
        if isinstance(mod, (nn.ReLU, nn.MaxPool2d)):
            hooks.append(mod.register_forward_pre_hook(pre))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            hooks.append(mod.register_forward_hook(post))
    with torch.no_grad():
        model(x.to(dtype))
    for h in hooks:
        h.remove()
    for h in handles:
        h.remove()
    del model
    return found


# ----------------------------------------------------------------------------
# Branch-flip diagnosis
# ----------------------------------------------------------------------------

def forward_probe_names(original, compiled) -> list:
    """[(kind, node name, tensor, attrs)] for the forward Relu and MaxPool nodes of the compiled model."""
    from onnx import helper

    wanted = {n.name for n in original.graph.node if n.op_type in ("Relu", "MaxPool")}
    probes = []
    for n in compiled.graph.node:
        if n.name in wanted and n.op_type in ("Relu", "MaxPool"):
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            probes.append((n.op_type, n.name, n.input[0], attrs))
    return probes


def with_extra_outputs(compiled, tensors: list):
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(compiled)
    have = {o.name for o in m.graph.output}
    for t in dict.fromkeys(tensors):
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    return m


def maxpool_winners(a: np.ndarray, attrs: dict) -> np.ndarray:
    """Flat argmax index of every max-pool window (torch, first maximum), for an NCHW array."""
    import torch
    import torch.nn.functional as F

    k = list(attrs.get("kernel_shape"))
    s = list(attrs.get("strides", [1] * len(k)))
    pads = list(attrs.get("pads", [0] * 2 * len(k)))
    d = list(attrs.get("dilations", [1] * len(k)))
    t = torch.from_numpy(np.asarray(a, np.float64))
    if pads[:2] != pads[2:]:
        t = F.pad(t, (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
        pad = 0
    else:
        pad = tuple(pads[:2])
    _, idx = F.max_pool2d(t, k, s, pad, d, ceil_mode=bool(attrs.get("ceil_mode", 0)), return_indices=True)
    return idx.numpy()


def match(arr: np.ndarray, cands: list, used: set):
    """Index of the candidate with arr's shape closest to arr (relative L2), and that distance."""
    best, best_err = None, np.inf
    nb = np.linalg.norm(arr)
    for i, (_, c) in enumerate(cands):
        if c.shape != arr.shape:
            continue
        err = np.linalg.norm(arr - c) / max(np.linalg.norm(c), nb, 1e-300)
        if err < best_err or (err == best_err and best in used):
            best, best_err = i, err
    return best, best_err


def flip_diagnosis(probes, ort_vals: dict, c64: list, c32: list) -> dict:
    """Sign flips of ReLU pre-activations and max-pool winner changes, ORT float32 and torch float32
    against torch float64, per node and in total (per sample)."""
    used, per_node = set(), []
    tot = {"relu_units": 0, "relu_flips_ort": [0] * BATCH, "relu_flips_torch32": [0] * BATCH,
           "maxpool_windows": 0, "maxpool_flips_ort": [0] * BATCH, "maxpool_flips_torch32": [0] * BATCH,
           "unmatched": []}
    for kind, name, tensor, attrs in probes:
        a = np.asarray(ort_vals[tensor], np.float64)
        i, err = match(a, c64, used)
        if i is None or err > 1e-2:
            tot["unmatched"].append(f"{kind} {name} (closest rel diff {err:.1e})")
            continue
        used.add(i)
        t64, t32 = c64[i][1], c32[i][1]
        row = {"node": name, "op": kind, "torch_tensor": c64[i][0], "match_rel_diff": float(err)}
        if kind == "Relu":
            fo = ((a > 0) != (t64 > 0)).reshape(BATCH, -1)
            ft = ((t32 > 0) != (t64 > 0)).reshape(BATCH, -1)
            row["units"] = int(fo.shape[1])
            row["flips_ort"] = fo.sum(1).tolist()
            row["flips_torch32"] = ft.sum(1).tolist()
            if fo.any():
                scale = float(np.sqrt(np.mean(t64 ** 2)))
                row["max_abs_preact_at_ort_flip_rel_rms"] = float(np.abs(t64.reshape(BATCH, -1)[fo]).max() / scale)
            tot["relu_units"] += row["units"]
            for n in range(BATCH):
                tot["relu_flips_ort"][n] += row["flips_ort"][n]
                tot["relu_flips_torch32"][n] += row["flips_torch32"][n]
        else:
            w64 = maxpool_winners(t64, attrs)
            wo = (maxpool_winners(a, attrs) != w64).reshape(BATCH, -1)
            wt = (maxpool_winners(t32, attrs) != w64).reshape(BATCH, -1)
            row["windows"] = int(wo.shape[1])
            row["flips_ort"] = wo.sum(1).tolist()
            row["flips_torch32"] = wt.sum(1).tolist()
            tot["maxpool_windows"] += row["windows"]
            for n in range(BATCH):
                tot["maxpool_flips_ort"][n] += row["flips_ort"][n]
                tot["maxpool_flips_torch32"][n] += row["flips_torch32"][n]
        if any(row["flips_ort"]) or any(row["flips_torch32"]):
            per_node.append(row)
    tot["nodes_with_flips"] = per_node
    tot["probes"] = len(probes)
    return tot


# ----------------------------------------------------------------------------
# The compiled graph in float64 (onnx.reference, Conv/ConvTranspose through torch)
# ----------------------------------------------------------------------------

def graph_to_double(model):
    """A copy of ``model`` with float64 Cast targets, tensor attributes and I/O types (initializers are
    converted by :func:`run_graph64` after loading: a float64 copy of a large model would not fit a proto)."""
    import onnx
    from onnx import numpy_helper

    T = onnx.TensorProto
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi in list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == T.FLOAT:
            vi.type.tensor_type.elem_type = T.DOUBLE
    del g.value_info[:]
    for n in g.node:
        for a in n.attribute:
            if a.name == "to" and a.i == T.FLOAT:
                a.i = T.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == T.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
    return m


def _torch_conv_ops():
    """onnx.reference kernels for Conv/ConvTranspose/MaxPool backed by torch (float64; the reference
    ConvTranspose mishandles groups, MaxPool mis-sizes ceil_mode windows, and the convolutions are slow),
    and an OneHot that accepts a one-element ``depth`` tensor (valid ONNX; the reference one wants a scalar)."""
    import torch
    import torch.nn.functional as F
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops import op_one_hot

    def t(a):
        return torch.from_numpy(np.array(a, copy=True))

    class Conv(OpRun):
        op_domain = ""

        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None,
                 strides=None):
            assert auto_pad in (None, "NOTSET", b"NOTSET"), auto_pad
            nd = W.ndim - 2
            assert nd == 2, "2-D convolutions only"
            pads = list(pads or [0] * 2 * nd)
            x = t(X)
            if pads[:nd] != pads[nd:]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
                pads = [0] * 2 * nd
            y = F.conv2d(x, t(W), None if B is None else t(B), tuple(strides or [1] * nd), tuple(pads[:nd]),
                         tuple(dilations or [1] * nd), group or 1)
            return (y.numpy(),)

    class ConvTranspose(OpRun):
        op_domain = ""

        def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None, kernel_shape=None,
                 output_padding=None, output_shape=None, pads=None, strides=None):
            assert auto_pad in (None, "NOTSET", b"NOTSET") and output_shape is None
            nd = W.ndim - 2
            assert nd == 2, "2-D convolutions only"
            pads = list(pads or [0] * 2 * nd)
            y = F.conv_transpose2d(t(X), t(W), None if B is None else t(B), tuple(strides or [1] * nd), 0,
                                   tuple(output_padding or [0] * nd), group or 1, tuple(dilations or [1] * nd))
            h, w = y.shape[2:]
            return (y[:, :, pads[0]:h - pads[2], pads[1]:w - pads[3]].contiguous().numpy(),)

    class MaxPool(OpRun):
        """torch's max_pool2d (first maximum wins, as ONNX Runtime); the reference one mis-sizes ceil_mode."""
        op_domain = ""

        def _run(self, X, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None, pads=None,
                 storage_order=None, strides=None):
            assert auto_pad in (None, "NOTSET", b"NOTSET") and not storage_order and len(kernel_shape) == 2
            pads = list(pads or [0] * 4)
            x = t(X)
            n, c, h, w = x.shape
            if pads[:2] != pads[2:]:
                x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]), value=-np.inf)
                pad, off = (0, 0), (pads[0], pads[1])
            else:
                pad, off = tuple(pads[:2]), (0, 0)
            y, idx = F.max_pool2d(x, tuple(kernel_shape), tuple(strides or [1, 1]), pad, tuple(dilations or [1, 1]),
                                  ceil_mode=bool(ceil_mode), return_indices=True)
            wp = x.shape[3]
            flat = (idx // wp - off[0]) * w + (idx % wp - off[1])
            flat = flat + torch.arange(n * c, dtype=flat.dtype).reshape(n, c, 1, 1) * (h * w)
            return (y.numpy(), flat.numpy().astype(np.int64))

    if not getattr(op_one_hot, "_onnxplain_bench_patched", False):
        orig = op_one_hot._one_hot

        def one_hot(indices, depth, axis=-1, dtype=np.float32):
            return orig(indices, int(np.asarray(depth).reshape(-1)[0]), axis=axis, dtype=dtype)

        op_one_hot._one_hot = one_hot
        op_one_hot._onnxplain_bench_patched = True
    return [Conv, ConvTranspose, MaxPool]


def run_graph64(model, feeds: dict, outputs: list, compare=None) -> tuple:
    """Run ``model`` converted to float64 node by node (tensors freed after their last use).

    ``compare`` (optional): name -> float32 array of the same graph's tensors from ONNX Runtime; then also
    returns, per node in order, (op, name, error of its first output vs ORT, largest error of its inputs).
    """
    import torch
    from onnx.reference import ReferenceEvaluator

    torch.set_num_threads(THREADS)
    ev = ReferenceEvaluator(graph_to_double(model), new_ops=_torch_conv_ops())
    last = {}
    for i, node in enumerate(ev.rt_nodes_):
        for name in node.input:
            last[name] = i
    for k, v in list(ev.rt_inits_.items()):
        if isinstance(v, np.ndarray) and v.dtype == np.float32:
            ev.rt_inits_[k] = v.astype(np.float64)
    results = {"": None, **ev.rt_inits_, **feeds}
    keep = set(outputs) | set(ev.rt_inits_) | set(feeds)
    errs, trace = {}, []
    for i, node in enumerate(ev.rt_nodes_):
        outs = node.run(*[results[n] for n in node.input])
        for name, value in zip(node.output, outs):
            results[name] = value
        if compare is not None and node.output and node.output[0] in compare:
            a, b = compare[node.output[0]], results[node.output[0]]
            nb = np.linalg.norm(b)
            e = float(np.linalg.norm(a.astype(np.float64) - b) / nb) if nb > 0 else float(np.abs(a).max() > 0)
            errs[node.output[0]] = e
            trace.append((node.op_type, node.onnx_node.name, e, max([errs.get(n, 0.0) for n in node.input] + [0.0])))
        for name in set(node.input):
            if last.get(name) == i and name not in keep:
                results.pop(name, None)
    return [results[n] for n in outputs], trace


def localize(model, feeds32: dict, feeds64: dict, top: int = 8) -> list:
    """Nodes where ORT float32 departs most from the same graph in float64 (error jump vs its inputs)."""
    import onnx

    names = [o for n in model.graph.node for o in n.output[:1] if o]
    inferred = onnx.shape_inference.infer_shapes(model)
    fl = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    del inferred
    probe = with_extra_outputs(model, [n for n in names if n in fl])
    sess = common.ort_session(probe, THREADS)
    outs = [o.name for o in sess.get_outputs() if o.type == "tensor(float)"]
    vals = dict(zip(outs, sess.run(outs, feeds32)))
    del sess, probe
    _, trace = run_graph64(model, feeds64, [], compare=vals)
    jumps = [(e / max(m, 1e-12), op, name, e, m) for op, name, e, m in trace if e > 1e-6 and e > 5 * m]
    jumps.sort(key=lambda r: -r[3])
    return [{"op": op, "node": name, "err_vs_f64_graph": e, "inputs_max_err": m} for _, op, name, e, m in jumps[:top]]


# ----------------------------------------------------------------------------
# One architecture (subprocess)
# ----------------------------------------------------------------------------

def worker(name: str, out_json: str) -> None:
    import onnx
    import torch

    import onnxplain

    torch.set_num_threads(THREADS)
    mzr = zennit_refs_module()
    family = ARCHS[name][1]
    rec = {"arch": name, "family": family}

    def save():
        with open(out_json, "w") as fh:
            json.dump(rec, fh)

    t0 = time.perf_counter()
    model = build(name)
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec["batchnorms"] = common.calibrate_batchnorm(model, ARCHS[name][0])
    probe = torch.randn(8, *common.INPUT_SHAPE, generator=torch.Generator().manual_seed(5))
    std, rescaled, finite = common.ensure_nondegenerate(model, probe)
    rec.update(logit_std=std, rescaled_last_layer=rescaled, logits_finite=finite)
    gen = torch.Generator().manual_seed(ARCHS[name][0] + 7)  # as bench/full_size_accuracy.py
    x = torch.randn(BATCH, *common.INPUT_SHAPE, generator=gen)
    with torch.no_grad():
        logits64 = copy.deepcopy(model).double()(x.double()).numpy()
    target = torch.from_numpy(logits64.argmax(1))
    rec["target"] = target.tolist()
    top2 = np.sort(logits64, axis=1)[:, -2:]
    rec["top2_margin"] = (top2[:, 1] - top2[:, 0]).tolist()
    rec["logit64"] = logits64[np.arange(BATCH), target.numpy()].tolist()
    rec["prepare_s"] = round(time.perf_counter() - t0, 1)
    print(f"[{name}] params {rec['params']}, BN {rec['batchnorms']}, target {rec['target']}, "
          f"logit {rec['logit64']}", flush=True)

    tmp = tempfile.mkdtemp(prefix=f"onnxplain-lrp-{name}-")
    try:
        path = os.path.join(tmp, f"{name}.onnx")
        t0 = time.perf_counter()
        common.export_legacy(model, path)
        common.cap_ir_version(path)
        rec["export_s"] = round(time.perf_counter() - t0, 1)
        original = onnx.load(path)
        t0 = time.perf_counter()
        compiled = onnxplain.compile(original, list(COMPOSITES.values()), params=dict(COMPILE_PARAMS))
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        rec["compiled_bytes"] = compiled.ByteSize()
        rec["nodes"] = [len(original.graph.node), len(compiled.graph.node)]
        print(f"[{name}] export {rec['export_s']} s, compile {rec['compile_s']} s, "
              f"{rec['compiled_bytes'] / 1e6:.0f} MB", flush=True)
        feeds = {"input": x.numpy(), "target": target.numpy()}
        outs = [o.name for o in compiled.graph.output]
        sess = common.ort_session(compiled, THREADS)
        t0 = time.perf_counter()
        got = dict(zip(outs, sess.run(outs, feeds)))
        rec["ort_run_s"] = round(time.perf_counter() - t0, 2)
        del sess
        gc.collect()
        logit_ours = got["logits"][np.arange(BATCH), target.numpy()].astype(np.float64)
        rec["logits_rel_err_ort_vs_float64"] = rel_err(got["logits"], logits64)
        rec["logit_ours"] = logit_ours.tolist()
        save()

        # Zennit references and the comparison
        rec["composites"] = {}
        z64s = {}
        for cname, method in COMPOSITES.items():
            t0 = time.perf_counter()
            out64, z64 = zennit_attr(mzr, family, model, x, target, cname, torch.float64)
            t64 = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, z32 = zennit_attr(mzr, family, model, x, target, cname, torch.float32)
            t32 = time.perf_counter() - t0
            ours = got[f"{method}/input"].astype(np.float64) / logit_ours.reshape(-1, 1, 1, 1)
            e_z, e_o = rel_err(z32, z64), rel_err(ours, z64)
            c = {"method": method, "e_zennit": e_z, "e_ours": e_o,
                 "ratio": [o / z if z > 0 else float("inf") for o, z in zip(e_o, e_z)],
                 "pass_per_sample": [o <= max(3 * z, 1e-4) for o, z in zip(e_o, e_z)],
                 "zennit64_logit_err": rel_err(out64, logits64),
                 "sum_zennit64": z64.reshape(BATCH, -1).sum(1).tolist(),
                 "sum_ours": ours.reshape(BATCH, -1).sum(1).tolist(),
                 "zennit_s": [round(t64, 1), round(t32, 1)],
                 "finite_ours": bool(np.isfinite(ours).all())}
            c["pass"] = all(c["pass_per_sample"])
            rec["composites"][cname] = c
            z64s[cname] = z64
            print(f"[{name}] {cname:24s} e_zennit {e_z[0]:.1e},{e_z[1]:.1e}  e_ours {e_o[0]:.1e},{e_o[1]:.1e}"
                  f"  {'PASS' if c['pass'] else 'FAIL'}  (zennit {t64:.0f}+{t32:.0f} s)", flush=True)
            save()

        # The same compiled graph in float64: implementation error without float32 arithmetic
        t0 = time.perf_counter()
        feeds64 = {"input": x.double().numpy(), "target": target.numpy()}
        outs64 = ["logits"] + [f"{m}/input" for m in COMPOSITES.values()]
        try:
            vals64, _ = run_graph64(compiled, feeds64, outs64)
            g_logit = vals64[0][np.arange(BATCH), target.numpy()].reshape(-1, 1, 1, 1)
            rec["graph64_logits_rel_err_vs_torch64"] = rel_err(vals64[0], logits64)
            for i, (cname, c) in enumerate(rec["composites"].items(), 1):
                g64 = vals64[i] / g_logit
                ours = got[f"{c['method']}/input"].astype(np.float64) / logit_ours.reshape(-1, 1, 1, 1)
                c["e_graph64"] = rel_err(g64, z64s[cname])
                c["e_ort_vs_graph64"] = rel_err(ours, g64)
                print(f"[{name}] {cname:24s} graph64 vs zennit64 {fl(c['e_graph64'])}; ORT vs graph64 "
                      f"{fl(c['e_ort_vs_graph64'])}", flush=True)
            del vals64
        except Exception:  # noqa: BLE001 - recorded
            rec["graph64_error"] = traceback.format_exc()[-3000:]
            print(rec["graph64_error"], file=sys.stderr, flush=True)
        rec["graph64_s"] = round(time.perf_counter() - t0, 1)
        gc.collect()
        save()

        # Exactness: the model exported in float64 (BatchNorm folded in float64 by the exporter), compiled and
        # evaluated in float64, against Zennit float64. Free of float32 rounding anywhere: a wrong rule shows here.
        t0 = time.perf_counter()
        try:
            path64 = os.path.join(tmp, f"{name}_f64.onnx")
            export_double(model, path64)
            compiled64 = onnxplain.compile(onnx.load(path64), list(COMPOSITES.values()), params=dict(COMPILE_PARAMS))
            os.remove(path64)
            vals64, _ = run_graph64(compiled64, feeds64, outs64)
            del compiled64
            e_logit = rel_err(vals64[0], logits64)
            rec["exact64_logits_rel_err"] = e_logit
            g_logit = vals64[0][np.arange(BATCH), target.numpy()].reshape(-1, 1, 1, 1)
            for i, (cname, c) in enumerate(rec["composites"].items(), 1):
                c["e_exact64"] = rel_err(vals64[i] / g_logit, z64s[cname])
                print(f"[{name}] {cname:24s} float64 export, compiled, float64 vs zennit64 {fl(c['e_exact64'])}",
                      flush=True)
            del vals64
        except Exception:  # noqa: BLE001 - recorded
            rec["exact64_error"] = traceback.format_exc()[-3000:]
            print(rec["exact64_error"], file=sys.stderr, flush=True)
        rec["exact64_s"] = round(time.perf_counter() - t0, 1)
        gc.collect()
        save()

        # Branch flips of the forward pass: ORT float32 vs torch float64 (and torch float32)
        t0 = time.perf_counter()
        try:
            probes = forward_probe_names(original, compiled)
            diag_model = with_extra_outputs(compiled, [p[2] for p in probes])
            del compiled
            gc.collect()
            sess = common.ort_session(diag_model, THREADS)
            del diag_model
            names = [o.name for o in sess.get_outputs()]
            vals = dict(zip(names, sess.run(names, feeds)))
            del sess
            rec["maps_unchanged_by_probes"] = max(
                float(np.abs(vals[f"{m}/input"] - got[f"{m}/input"]).max()) for m in COMPOSITES.values())
            c64 = torch_preacts(mzr, family, model, x, torch.float64)
            c32 = torch_preacts(mzr, family, model, x, torch.float32)
            rec["flips"] = flip_diagnosis(probes, vals, c64, c32)
            del vals, c64, c32
        except Exception:  # noqa: BLE001 - recorded
            rec["flips_error"] = traceback.format_exc()[-3000:]
        rec["flip_diag_s"] = round(time.perf_counter() - t0, 1)
        f = rec.get("flips", {})
        print(f"[{name}] ReLU flips ORT {f.get('relu_flips_ort')} torch32 {f.get('relu_flips_torch32')} "
              f"of {f.get('relu_units')}; maxpool flips ORT {f.get('maxpool_flips_ort')} torch32 "
              f"{f.get('maxpool_flips_torch32')} of {f.get('maxpool_windows')}; unmatched "
              f"{f.get('unmatched')} {rec.get('flips_error', '')}", flush=True)
        save()

        # Failing composites: sensitivity of Zennit to ~2-ulp input perturbations
        pg = torch.Generator().manual_seed(ARCHS[name][0] + 99)
        perts = [(x.double() * (1 + PERTURB_REL * torch.randn(x.shape, generator=pg, dtype=torch.float64)))
                 for _ in range(PERTURBATIONS)]
        flagged = [cname for cname, c in rec["composites"].items() if flag(c)]
        for cname in flagged:
            c = rec["composites"][cname]
            errs = []
            for xp in perts:
                _, zp = zennit_attr(mzr, family, model, xp.float(), target, cname, torch.float32)
                errs.append(rel_err(zp, z64s[cname]))
            _, zp64 = zennit_attr(mzr, family, model, perts[0].float().double(), target, cname, torch.float64)
            c["e_zennit_perturbed"] = errs
            c["e_zennit_spread"] = [max([c["e_zennit"][n]] + [e[n] for e in errs]) for n in range(BATCH)]
            c["e64_perturbed"] = rel_err(zp64, z64s[cname])
            c["pass_kink_aware"] = all(o <= max(3 * s, 1e-4) for o, s in zip(c["e_ours"], c["e_zennit_spread"]))
            print(f"[{name}] {cname}: e_zennit spread {c['e_zennit_spread']}, e64 perturbed "
                  f"{c['e64_perturbed']}, kink-aware pass {c['pass_kink_aware']}", flush=True)
            save()
        # Where does ORT's float32 run of the graph depart from the graph in float64? (single-method model;
        # skipped for models above LOCALIZE_MAX_PARAMS: every tensor of the graph is fetched from ORT)
        worst = sorted(flagged, key=lambda k: -max(rec["composites"][k]["ratio"]))[:LOCALIZE_MAX]
        for cname in worst if rec["params"] <= LOCALIZE_MAX_PARAMS else []:
            c = rec["composites"][cname]
            try:
                single = onnxplain.compile(original, [c["method"]], params={
                    k: v for k, v in COMPILE_PARAMS.items() if k.startswith(c["method"] + ".")})
                c["localized"] = localize(single, feeds, feeds64)
                del single
            except Exception:  # noqa: BLE001 - recorded
                c["localize_error"] = traceback.format_exc()[-2000:]
            gc.collect()
            for row in c.get("localized", [])[:4]:
                print(f"[{name}] {cname}: ORT departs at {row['op']} {row['node']} ({row['err_vs_f64_graph']:.1e}, "
                      f"inputs {row['inputs_max_err']:.1e})", flush=True)
            save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save()


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------

def markdown(records: list, meta: dict) -> str:
    lines = [
        "# onnxplain LRP (Zennit composites) on full-size torchvision models",
        "",
        f"Generated by `bench/lrp_full_size.py` on {meta['date']} ({meta['machine']}; torch {meta['torch']}, "
        f"torchvision {meta['torchvision']}, zennit {meta['zennit']}, onnx {meta['onnx']}, onnxruntime "
        f"{meta['onnxruntime']}, onnxplain {meta['onnxplain']} at {meta.get('git', '?')}).",
        "",
        f"Random seeded weights, BatchNorm calibrated on random inputs, 224×224, batch {BATCH}, N(0,1) inputs, "
        "target = float64 argmax. Legacy export (opset 17, dynamic batch); the five composites compiled into one "
        "model, run in ONNX Runtime CPU float32; our maps divided by the explained logit. Reference: Zennit "
        "0.5.1 in float64 with the architecture's canonizers and exactly folded BatchNorm (`_exactbn`). "
        "`e_zennit`: Zennit float32 vs float64; `e_ours`: onnxplain vs Zennit float64 (per sample, relative "
        "L2). Pass: `e_ours <= max(3·e_zennit, 1e-4)` for both samples.",
        "",
        "Decomposition: `graph64` is the same compiled graph evaluated in float64 (onnx.reference, Conv and "
        "ConvTranspose through torch float64; its weights are the exported float32 ones, BatchNorm folded "
        "by the exporter in float32): `e_graph64` = graph64 vs Zennit float64 (what the compiled rules "
        "compute, free of float32 arithmetic; bounded below by the float32 storage of the folded weights, "
        "see the logits column further down), `ORT vs graph64` = the error that ONNX Runtime's float32 "
        "arithmetic adds on the same graph. For cases flagged for diagnosis (a failure, a ratio above 3, or "
        f"e_ours above 1e-3), Zennit float32 is rerun on {PERTURBATIONS} inputs perturbed by a relative "
        f"{PERTURB_REL:.1e} (~2 ulps): `e_zennit spread` is the largest error against the unperturbed float64 "
        "reference, `e64 perturbed` the distance of Zennit float64 at a perturbed input from Zennit float64 at "
        "x (how discontinuous / ill-conditioned the map itself is there); kink-aware pass: `e_ours <= "
        "max(3·spread, 1e-4)`.",
        "",
        "`e_exact64`: the model exported **in float64** (BatchNorm folded in float64), compiled by onnxplain "
        "and evaluated in float64, against Zennit float64: no float32 rounding anywhere, so any wrong rule, "
        "stabiliser or routing shows here at full size (agreement to ~1e-12 or better means the compiled "
        "graph computes exactly Zennit's composite).",
        "",
        "| arch | composite | e_zennit | e_ours | ratio | pass | e_exact64 | e_graph64 | ORT vs graph64 "
        "| e_zennit spread (perturbed) | e64 perturbed | kink-aware pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "composites" not in r:
            lines.append(f"| {r['arch']} | – | – | – | – | **ERROR** | | | | | | "
                         f"{(r.get('worker_error') or '')[:200]} |")
            continue
        for cname, c in r["composites"].items():
            lines.append(
                f"| {r['arch']} | {cname} | {fl(c['e_zennit'])} | {fl(c['e_ours'])} | {fl(c['ratio'], '.2f')} "
                f"| {'PASS' if c['pass'] else '**FAIL**'} | {fl(c.get('e_exact64'))} | {fl(c.get('e_graph64'))} "
                f"| {fl(c.get('e_ort_vs_graph64'))} "
                f"| {fl(c.get('e_zennit_spread'))} "
                f"| {fl(c.get('e64_perturbed'))} "
                f"| {('PASS' if c['pass_kink_aware'] else '**FAIL**') if 'pass_kink_aware' in c else '–'} |")
    lines += ["", "## Per architecture: forward-pass branch flips and costs", "",
              "ReLU flips: ReLU units whose pre-activation sign in the float32 forward differs from PyTorch "
              "float64 (ONNX Runtime's forward inside the compiled model / PyTorch float32 on the canonized "
              "model), per sample. Max-pool flips: windows whose winner differs. Tensors matched by shape "
              "and value (`unmatched` lists probes without a match).", "",
              "| arch | params | BN | top-2 margin | logits err ORT vs f64 | logits err graph64 vs f64 | ReLU units "
              "| ReLU flips ORT | ReLU flips torch32 | max-pool windows | max-pool flips ORT | max-pool flips torch32 "
              "| compile s (5 methods) | compiled MB | ORT run s (5 methods, first run) | maps unchanged by probes "
              "| unmatched |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        f = r.get("flips", {})
        lines.append(
            f"| {r['arch']} | {r.get('params', '–')} | {r.get('batchnorms', '–')} | {fl(r.get('top2_margin'), '.2g')} "
            f"| {fl(r.get('logits_rel_err_ort_vs_float64'))} | {fl(r.get('graph64_logits_rel_err_vs_torch64'))} "
            f"| {f.get('relu_units', '–')} "
            f"| {fl(f.get('relu_flips_ort'), 'd')} | {fl(f.get('relu_flips_torch32'), 'd')} "
            f"| {f.get('maxpool_windows', '–')} | {fl(f.get('maxpool_flips_ort'), 'd')} "
            f"| {fl(f.get('maxpool_flips_torch32'), 'd')} | {r.get('compile_s', '–')} "
            f"| {r.get('compiled_bytes', 0) / 1e6:.0f} | {r.get('ort_run_s', '–')} "
            f"| {r.get('maps_unchanged_by_probes', '–')} | {len(f.get('unmatched', [])) if f else '–'} |")
    notes = [r for r in records if r.get("flips", {}).get("nodes_with_flips") or r.get("flips_error")]
    if notes:
        lines += ["", "Nodes with flips (ORT / torch32 per sample; for ReLU also the largest |pre-activation| "
                  "at an ORT flip, relative to the layer's RMS):", ""]
        for r in notes:
            if r.get("flips_error"):
                lines.append(f"- {r['arch']}: diagnosis error `{r['flips_error'].splitlines()[-1][:200]}`")
            for row in r.get("flips", {}).get("nodes_with_flips", [])[:30]:
                extra = (f", max |z| {row['max_abs_preact_at_ort_flip_rel_rms']:.1e}·rms"
                         if "max_abs_preact_at_ort_flip_rel_rms" in row else "")
                lines.append(f"- {r['arch']} `{row['node']}` ({row['op']}): ORT {row['flips_ort']}, "
                             f"torch32 {row['flips_torch32']}{extra}")
    loc = [(r, cname, c) for r in records for cname, c in r.get("composites", {}).items()
           if c.get("localized") or c.get("localize_error")]
    if loc:
        lines += ["", "Localization (flagged cases; single-method model, every tensor of ORT's float32 run compared "
                  "with the graph in float64; nodes where the error jumps to more than 5x that of their inputs, "
                  "largest first):", ""]
        for r, cname, c in loc:
            if c.get("localize_error"):
                lines.append(f"- {r['arch']} {cname}: error `{c['localize_error'].splitlines()[-1][:200]}`")
                continue
            lines.append(f"- {r['arch']} {cname}: " + "; ".join(
                f"`{row['node']}` ({row['op']}) {row['err_vs_f64_graph']:.1e} (inputs {row['inputs_max_err']:.1e})"
                for row in c["localized"][:5]))
    for r in records:
        for key in ("graph64_error", "exact64_error"):
            if r.get(key):
                lines.append(f"- {r['arch']}: {key} `{r[key].splitlines()[-1][:200]}`")
    if meta.get("commentary"):
        lines += ["", "## Reading", "", meta["commentary"]]
    return "\n".join(lines) + "\n"


def versions() -> dict:
    import importlib.metadata

    import onnx
    import onnxruntime
    import torch
    import torchvision

    import onnxplain

    try:
        repo = os.path.dirname(HERE)
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        git = head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    except OSError:
        git = "?"
    return {"git": git, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {THREADS} threads",
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "zennit": importlib.metadata.version("zennit"), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxplain": getattr(onnxplain, "__version__", "?")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", action="append", choices=list(ARCHS), help="repeatable; default: all")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per architecture")
    ap.add_argument("--json", default=JSON_PATH)
    ap.add_argument("--md", default=MD_PATH)
    ap.add_argument("--merge", action="store_true",
                    help="keep the other architectures' records already in --json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.worker_out)
        return 0
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    meta = versions()
    records = []
    if args.merge and os.path.exists(args.json):
        with open(args.json) as fh:
            old = json.load(fh)
        records = [r for r in old["records"] if r["arch"] not in (args.arch or ARCHS)]
        meta["commentary"] = old.get("meta", {}).get("commentary")
    t_all = time.perf_counter()
    for name in args.arch or list(ARCHS):
        fd, out = tempfile.mkstemp(prefix=f"onnxplain-lrp-{name}-", suffix=".json")
        os.close(fd)
        t0 = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            rc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name,
                                 "--worker-out", out], timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        try:
            with open(out) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            rec = {"arch": name}
        os.remove(out)
        if rc != 0:
            rec["worker_error"] = f"worker exit status {rc}"
        rec["arch_wall_s"] = round(time.perf_counter() - t0, 1)
        records = [r for r in records if r["arch"] != name] + [rec]
        order = list(ARCHS)
        records.sort(key=lambda r: order.index(r["arch"]))
        meta["total_s"] = round(time.perf_counter() - t_all, 1)
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "records": records}, fh, indent=1)
        with open(args.md, "w") as fh:
            fh.write(markdown(records, meta))
        print(f"=== {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"wrote {args.json} and {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
