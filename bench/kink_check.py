#!/usr/bin/env python3
"""Diagnose a large ``e_ours`` of full_size_accuracy.py: does ONNX Runtime's float32 forward pass of
the compiled model take another branch at a ReLU or a max-pool than float64 PyTorch does?

Run with the reference virtual environment::

    /work/venv-ref/bin/python bench/kink_check.py vgg16 --sample 0
    /work/venv-ref/bin/python bench/kink_check.py squeezenet1_1 --sample 0 --alpha 0.75

It rebuilds the architecture and the input exactly as ``full_size_accuracy.py`` does, scales the
input by ``--alpha`` (an integrated-gradients point), exports it with the legacy exporter, compiles
``gradient`` with onnxplain and exposes, in the compiled model, the input of every forward ``Relu``
and the ``Indices`` of every forward ``MaxPool``. It then lists

* ReLU inputs whose sign differs from float64 PyTorch (``nn.ReLU`` modules, in call order), with the
  float64 and float32 values and the tensor's scale;
* max-pool windows whose chosen element differs from float64 PyTorch (``nn.MaxPool2d`` modules), with
  the two candidate values in float64;

and the relative error of the compiled gradient at that point against float64. Sign flips at values
~1e-7 of the tensor's scale, or max-pool near-ties with a relative gap ~1e-7, are kinks that float32
arithmetic may resolve either way; they are not errors of a backward rule. PyTorch's float32 flips at
the same places are listed as well (often none: it rounds differently, not better).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main(argv=None) -> int:
    import onnx
    import torch

    import onnxplain
    from full_size_accuracy import BATCH, input_grad

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arch", choices=sorted(common.ARCHS))
    ap.add_argument("--sample", type=int, default=0)
    ap.add_argument("--alpha", type=float, default=1.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    name = args.arch
    model = common.build(name)
    common.calibrate_batchnorm(model, common.ARCHS[name])
    common.ensure_nondegenerate(model, torch.randn(8, *common.INPUT_SHAPE,
                                                   generator=torch.Generator().manual_seed(5)))
    x = torch.randn(BATCH, *common.INPUT_SHAPE, generator=torch.Generator().manual_seed(common.ARCHS[name] + 7))
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        target = model64(x.double()).argmax(1)[args.sample:args.sample + 1]
    xk = (x.double() * args.alpha).float()[args.sample:args.sample + 1]
    g64 = input_grad(model64, xk.double(), target).numpy()
    g32 = input_grad(model, xk, target).numpy()

    hooks = {"relu64": [], "relu32": [], "pool64": []}
    for mod, key in ((model64, "relu64"), (model, "relu32")):
        for m in mod.modules():
            if isinstance(m, torch.nn.ReLU):
                # pre-hook: torchvision's ReLUs are in-place, a forward hook would see the output
                m.register_forward_pre_hook(
                    lambda _m, i, key=key: hooks[key].append(i[0].detach().double().numpy().copy()))
    for m in model64.modules():
        if isinstance(m, torch.nn.MaxPool2d):
            m.register_forward_hook(lambda mm, i, _o: hooks["pool64"].append((mm, i[0].detach().clone())))
    with torch.no_grad():
        model64(xk.double())
        model(xk)
    for mod in (model, model64):  # the export below runs the model again
        for m in mod.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()

    with tempfile.TemporaryDirectory(prefix="onnxplain-kink-") as tmp:
        path = os.path.join(tmp, "m.onnx")
        common.export_legacy(model, path)
        common.cap_ir_version(path)
        original = {n.name for n in onnx.load(path, load_external_data=False).graph.node}
        compiled = onnxplain.compile(path, ["gradient"])
    pools = [n for n in compiled.graph.node if n.op_type == "MaxPool" and n.name in original]
    relus = [n for n in compiled.graph.node if n.op_type == "Relu" and n.name in original]
    for n in pools:
        if len(n.output) > 1 and n.output[1]:
            compiled.graph.output.append(onnx.helper.make_tensor_value_info(n.output[1], onnx.TensorProto.INT64, None))
    for n in relus:
        compiled.graph.output.append(onnx.helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None))
    sess = common.ort_session(compiled)
    names = ["gradient/input"] + [n.output[1] for n in pools if len(n.output) > 1 and n.output[1]]
    names += [n.input[0] for n in relus]
    outs = sess.run(names, {"input": xk.numpy(), "target": target.numpy()})
    print(f"{name} sample {args.sample} alpha {args.alpha}: gradient rel err ours "
          f"{common.rel_err_per_sample(outs[0], g64)[0]:.2e}, torch32 {common.rel_err_per_sample(g32, g64)[0]:.2e}")
    n_idx = len(names) - 1 - len(relus)
    pool_idx, relu_vals = outs[1:1 + n_idx], outs[1 + n_idx:]
    if len(relu_vals) != len(hooks["relu64"]):
        print(f"  {len(relu_vals)} Relu nodes but {len(hooks['relu64'])} nn.ReLU calls: ReLU comparison skipped")
    else:
        for node, got, want, t32 in zip(relus, relu_vals, hooks["relu64"], hooks["relu32"]):
            flips = np.argwhere((got > 0) != (want > 0))
            flips32 = int(((t32 > 0) != (want > 0)).sum())
            if len(flips) or flips32:
                ex = ", ".join(f"f64 {want[tuple(f)]:.3e} / ORT {got[tuple(f)]:.3e}" for f in flips[:3])
                print(f"  Relu {node.name}: {len(flips)} sign flips in ORT ({ex}), {flips32} in torch32; "
                      f"tensor scale {np.abs(want).max():.3g}")
    if len(pool_idx) != len(hooks["pool64"]):
        print(f"  {len(pool_idx)} MaxPool nodes but {len(hooks['pool64'])} nn.MaxPool2d calls: skipped")
    else:
        for node, idx, (mm, inp) in zip(pools, pool_idx, hooks["pool64"]):
            _, ti = torch.nn.functional.max_pool2d(inp, mm.kernel_size, mm.stride, mm.padding, mm.dilation,
                                                   mm.ceil_mode, return_indices=True)
            n, c, h, w = inp.shape
            ti = (ti + torch.arange(n * c).reshape(n, c, 1, 1) * h * w).numpy()
            diff = np.argwhere(ti != idx)
            if len(diff):
                flat = inp.flatten().numpy()
                ex = ", ".join(f"{flat[ti[tuple(d)]]:.9g} vs {flat[idx[tuple(d)]]:.9g}" for d in diff[:3])
                print(f"  MaxPool {node.name}: {len(diff)} windows choose another element in ORT "
                      f"(float64 values, PyTorch's choice vs ORT's: {ex})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
