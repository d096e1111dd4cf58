#!/usr/bin/env python3
"""Zennit LRP golden references for onnxplain's fixture architectures.

Run with the reference virtual environment (zennit installed into it)::

    /work/venv-ref/bin/pip install zennit==0.5.1
    /work/venv-ref/bin/python models/make_zennit_refs.py [--tables]

For each architecture in ``ARCH_NAMES`` it rebuilds the model exactly as
``make_fixtures.py`` does (same seeds, builders and BatchNorm calibration; the
float64 logits are checked against ``logits64`` of ``fixtures/<arch>.npz``),
takes that file's ``x`` and ``target``, and computes Zennit attributions with
``zennit.attribution.Gradient`` and ``attr_output`` = one-hot(target), i.e. the
relevance of the target logit is seeded with 1 (seed ``logit * one-hot`` to get
``logit *`` these maps).  It writes ``fixtures/<arch>_lrp.npz`` with:

* ``x`` float32 [2,3,64,64], ``target`` int64 [2], ``logits64`` float64 [2,10]:
  copies from ``<arch>.npz`` (``x``/``target`` are the inputs used here);
* ``<C>64`` [2,3,64,64]: stock Zennit attribution of composite ``C`` (model and
  input in float64), stored rounded to float32, for C in ``COMPOSITE_NAMES``;
* ``<C>32_err`` float64 [2]: per-sample ||attr32 - attr64|| / ||attr64|| of the
  same computation in float32;
* ``<C>_exactbn64`` / ``<C>_exactbn32_err``: the same with the merged BatchNorms
  made exact identities (Zennit's merge leaves them scaling by 1/sqrt(1+eps)); this
  is what Zennit's rules give on an exactly BN-folded graph such as the ONNX export;
* ``<C>_bn_eps_effect`` [2]: ||exactbn - stock|| / ||stock|| in float64;
* ``<C>_uniform...`` (the same five keys; regnet and densenet only): with an extra
  canonizer that turns functional ops into hooked modules, so that every residual
  addition gets Zennit's ``Norm`` rule (regnet) and the final global average pool
  gets ``Norm`` (densenet), as in the other architectures;
* ``canon_logit_err64``: relative change of the logits by the stock canonizers;
* ``rule_table`` str [n, 8]: per leaf module (after canonizers): name, type,
  BatchNorm merge status, and the Zennit rule of each composite (stock setup);
* ``params`` str: the composite parameters used (JSON).

``--tables`` also prints the per-architecture rule tables as Markdown
(they are reproduced in ``models/ZENNIT_NOTES.md``).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_fixtures as mf  # noqa: E402

from torchvision.models import regnet as tv_regnet  # noqa: E402
from torchvision.models import densenet as tv_densenet  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import (AttributeCanonizer, Canonizer, MergeBatchNorm,  # noqa: E402
                               NamedMergeBatchNorm, SequentialMergeBatchNorm)
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat,  # noqa: E402
                               EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat)
from zennit.core import Hook  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

FIXTURES = os.path.join(HERE, "fixtures")
ARCH_NAMES = ["vgg", "resnet", "densenet", "squeezenet1_1", "regnet", "googlenet"]
COMPOSITE_NAMES = ["EpsilonPlus", "EpsilonPlusFlat", "EpsilonGammaBox",
                   "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat"]
# Zennit defaults (zennit 0.5.1, zennit/composites.py); low/high are ours.
EPSILON, STABILIZER, GAMMA = 1e-6, 1e-6, 0.25
BOX_LOW, BOX_HIGH = -3.0, 3.0
LOGIT_RTOL = 1e-6
UNIFORM_ARCHS = ("regnet", "densenet")
# Maps are computed in float64 and stored rounded to float32 (relative rounding
# error <= 6e-8 per element) to keep the files small.
STORE_DTYPE = np.float32


# ----------------------------------------------------------------------------
# Extra canonizers
# ----------------------------------------------------------------------------

class RegNetSumCanonizer(AttributeCanonizer):
    """Give torchvision RegNet's ``ResBottleneckBlock`` a ``Sum`` module for its residual add.

    Mirrors ``zennit.torchvision.ResNetBasicBlockCanonizer``: the block's forward is
    overloaded to stack the two summands on a new last axis and sum them with a
    ``zennit.layer.Sum`` module, which the composites map to the ``Norm`` rule.
    Stock Zennit has no such canonizer, so stock RegNet adds functionally (gradient).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, tv_regnet.ResBottleneckBlock):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        """ResBottleneckBlock.forward with the addition done by ``self.canonizer_sum``."""
        identity = self.proj(x) if self.proj is not None else x
        out = torch.stack([identity, self.f(x)], dim=-1)
        return self.activation(self.canonizer_sum(out))

    def copy(self):
        return RegNetSumCanonizer()


class DenseNetHeadCanonizer(AttributeCanonizer):
    """Replace DenseNet's functional ``F.relu`` + ``F.adaptive_avg_pool2d`` head by modules.

    With stock Zennit these two are functional, so they get the plain gradient
    (the pooled relevance is spread uniformly, 1/(H*W), and masked by relu').
    As modules they get ``Pass`` (ReLU) and ``Norm`` (AdaptiveAvgPool2d).
    """

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, tv_densenet.DenseNet):
            return {"forward": cls.forward.__get__(module),
                    "canonizer_relu": nn.ReLU(), "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def forward(self, x):
        """DenseNet.forward with module ReLU and module adaptive average pooling."""
        out = self.canonizer_pool(self.canonizer_relu(self.features(x)))
        return self.classifier(torch.flatten(out, 1))

    def copy(self):
        return DenseNetHeadCanonizer()


class ExactIdentityBatchNorm(Canonizer):
    """Set ``eps = 0`` on BatchNorms that a MergeBatchNorm canonizer turned into "identities".

    Zennit's ``MergeBatchNorm.merge_batch_norm`` sets running_mean=0, running_var=1,
    weight=1, bias=0 but keeps ``eps``, so the merged BN still scales its input by
    1/sqrt(1 + eps) (1 - 5e-6 for eps=1e-5).  Only used to *measure* how much this
    artefact of stock Zennit changes the attributions (keys ``<C>_bn_eps_effect``);
    the stored maps are stock Zennit.  Must come after the merging canonizer.
    """

    def __init__(self):
        self.saved = []

    def apply(self, root_module):
        instance = ExactIdentityBatchNorm()
        for module in root_module.modules():
            if (isinstance(module, nn.modules.batchnorm._BatchNorm)
                    and bool((module.running_var == 1).all()) and bool((module.running_mean == 0).all())
                    and bool((module.weight == 1).all()) and bool((module.bias == 0).all())):
                instance.saved.append((module, module.eps))
                module.eps = 0.0
        return [instance]

    def register(self):
        """Nothing to do: ``apply`` does the work."""

    def remove(self):
        for module, eps in self.saved:
            module.eps = eps
        self.saved = []


def densenet_merge_pairs(model: nn.Module) -> list:
    """(conv, BN) name pairs of DenseNet where the BN really consumes the conv's output.

    ``SequentialMergeBatchNorm`` pairs leaves by registration order, which in
    DenseNet pairs each dense layer's ``conv2`` with the next ``norm1`` /
    transition ``norm`` / ``norm5`` (whose input is a concatenation) and fails
    with a shape error.  Only ``conv0 -> norm0`` and ``conv1 -> norm2`` inside
    each dense layer are true conv->BN chains.
    """
    pairs = [(("features.conv0",), "features.norm0")]
    for name, module in model.named_modules():
        if isinstance(module, tv_densenet._DenseLayer):
            pairs.append(((f"{name}.conv1",), f"{name}.norm2"))
    return pairs


def canonizers_for(arch: str, model: nn.Module, uniform: bool) -> list:
    """Canonizer list per architecture (see ZENNIT_NOTES.md for the reasons)."""
    if arch == "vgg":
        return [VGGCanonizer()]
    if arch == "resnet":
        return [ResNetCanonizer()]
    if arch == "regnet":  # ResNetCanonizer's block canonizers do not match RegNet blocks
        return [ResNetCanonizer()] + ([RegNetSumCanonizer()] if uniform else [])
    if arch == "densenet":
        return [NamedMergeBatchNorm(densenet_merge_pairs(model))] + (
            [DenseNetHeadCanonizer()] if uniform else [])
    return [SequentialMergeBatchNorm()]  # squeezenet1_1 (no BN: no-op), googlenet


def make_composite(name: str, canonizers: list, x: torch.Tensor):
    """Composite ``name`` with Zennit's defaults; ZBox bounds are elementwise tensors."""
    kwargs = dict(epsilon=EPSILON, stabilizer=STABILIZER, canonizers=canonizers)
    if name == "EpsilonGammaBox":
        low = torch.full_like(x, BOX_LOW)
        high = torch.full_like(x, BOX_HIGH)
        return EpsilonGammaBox(low=low, high=high, gamma=GAMMA, **kwargs)
    return {"EpsilonPlus": EpsilonPlus, "EpsilonPlusFlat": EpsilonPlusFlat,
            "EpsilonAlpha2Beta1": EpsilonAlpha2Beta1,
            "EpsilonAlpha2Beta1Flat": EpsilonAlpha2Beta1Flat}[name](**kwargs)


# ----------------------------------------------------------------------------
# Attribution and rule table
# ----------------------------------------------------------------------------

def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor, composite):
    """Zennit LRP of the target logits: (logits computed under the composite, relevance)."""
    onehot = torch.eye(mf.NUM_CLASSES, dtype=x.dtype)[target]
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(x.clone(), onehot)
    return out.detach(), rel.detach()


def hook_of(module: nn.Module):
    """The Zennit hook registered on ``module`` (via its forward pre-hook), or None."""
    for fn in module._forward_pre_hooks.values():
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, Hook):
            return owner
    return None


def rule_rows(arch: str, model32: nn.Module, x: torch.Tensor, uniform: bool = False) -> list:
    """[name, type, BN status, rule per composite] for every leaf module after canonizers."""
    table = {}
    for cname in COMPOSITE_NAMES:
        model = copy.deepcopy(model32).double()
        composite = make_composite(cname, canonizers_for(arch, model, uniform), x.double())
        composite.register(model)
        merged = {}
        for handle in composite.handles:
            if isinstance(handle, MergeBatchNorm):
                names = {id(m): n for n, m in model.named_modules()}
                merged[id(handle.batch_norm)] = ", ".join(names[id(m)] for m in handle.linears)
        for name, module in model.named_modules():
            if list(module.children()):
                continue
            hook = hook_of(module)
            row = table.setdefault(name, {"type": type(module).__name__, "bn": ""})
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                row["bn"] = (f"merged into {merged[id(module)]}" if id(module) in merged
                             else "NOT merged")
            row[cname] = type(hook).__name__ if hook is not None else "(gradient)"
        composite.remove()
    return [[n, r["type"], r["bn"]] + [r[c] for c in COMPOSITE_NAMES] for n, r in table.items()]


def markdown_table(rows: list) -> str:
    """Compact Markdown rule table: one rule, or the five composites' rules joined by ' / '."""
    lines = ["| module | type | BatchNorm | rule (" + " / ".join(COMPOSITE_NAMES) + ") |",
             "|---|---|---|---|"]
    for name, kind, bn, *rules in rows:
        rule = rules[0] if len(set(rules)) == 1 else " / ".join(rules)
        lines.append(f"| `{name}` | {kind} | {bn} | {rule} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Closed-form rule formulas (as written in ZENNIT_NOTES.md) checked against Zennit
# ----------------------------------------------------------------------------

def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Zennit's ``stabilize``: z + eps * sign(z), with sign(0) = +1."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def formula_relevance(rule: str, layer: nn.Module, x: torch.Tensor, r: torch.Tensor,
                      low=None, high=None) -> torch.Tensor:
    """Closed-form relevance of ``rule`` at ``layer`` (Conv2d or Linear), input x, upper relevance r."""
    w, b = layer.weight, layer.bias if layer.bias is not None else torch.zeros(
        layer.weight.shape[0], dtype=x.dtype)
    if isinstance(layer, nn.Conv2d):
        def f(inp, weight, bias=None):
            return F.conv2d(inp, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

        def ft(s, weight, inp):  # transpose (vector-Jacobian product w.r.t. the input)
            return torch.nn.grad.conv2d_input(inp.shape, weight, s, layer.stride, layer.padding,
                                              layer.dilation, layer.groups)
    else:
        def f(inp, weight, bias=None):
            return F.linear(inp, weight, bias)

        def ft(s, weight, inp):
            return s @ weight
    pos, neg = w.clamp(min=0), w.clamp(max=0)
    bpos, bneg = b.clamp(min=0), b.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    eps = 1e-6
    if rule == "Epsilon":
        s = r / stab(f(x, w, b), eps)
        return x * ft(s, w, x)
    if rule == "ZPlus":
        s = r / stab(f(xp, pos, bpos) + f(xn, neg), eps)
        return xp * ft(s, pos, x) + xn * ft(s, neg, x)
    if rule == "AlphaBeta":  # alpha=2, beta=1
        sp = r / stab(f(xp, pos, bpos) + f(xn, neg), eps)
        sn = r / stab(f(xp, neg, bneg) + f(xn, pos), eps)
        return (2 * (xp * ft(sp, pos, x) + xn * ft(sp, neg, x))
                - 1 * (xp * ft(sn, neg, x) + xn * ft(sn, pos, x)))
    if rule == "Gamma":  # gamma=0.25
        g = GAMMA
        wu, wd, bu, bd = w + g * pos, w + g * neg, b + g * bpos, b + g * bneg
        z = f(x, w, b)
        sp = (z > 0).to(x) * r / stab(f(xp, wu, bu) + f(xn, wd), eps)
        sn = (z < 0).to(x) * r / stab(f(xp, wd, bd) + f(xn, wu), eps)
        return xp * (ft(sp, wu, x) + ft(sn, wd, x)) + xn * (ft(sp, wd, x) + ft(sn, wu, x))
    if rule == "ZBox":
        s = r / stab(f(x, w) - f(low, pos) - f(high, neg), eps)
        return x * ft(s, w, x) - low * ft(s, pos, x) - high * ft(s, neg, x)
    if rule == "Flat":
        ones = torch.ones_like(w)
        return ft(r / stab(f(torch.ones_like(x), ones), eps), ones, x)
    if rule == "WSquare":
        return ft(r / stab(f(torch.ones_like(x), w ** 2, b ** 2), eps), w ** 2, x)
    raise ValueError(rule)


def check_rule_formulas() -> float:
    """Assert that the closed forms above equal Zennit's hooks; return the largest relative error."""
    from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, WSquare, ZBox, ZPlus
    gen = torch.Generator().manual_seed(0)
    layers = [nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Linear(12, 5)]
    inputs = [torch.randn(2, 4, 9, 9, generator=gen), torch.randn(2, 12, generator=gen)]
    worst = 0.0
    for layer, x in zip(layers, inputs):
        layer = layer.double()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=gen))
        x = x.double()
        low, high = torch.full_like(x, BOX_LOW), torch.full_like(x, BOX_HIGH)
        r = torch.randn(layer(x).shape, generator=gen, dtype=torch.float64)
        hooks = {"Epsilon": Epsilon(), "ZPlus": ZPlus(), "AlphaBeta": AlphaBeta(2, 1),
                 "Gamma": Gamma(GAMMA), "ZBox": ZBox(low, high), "Flat": Flat(), "WSquare": WSquare()}
        for name, hook in hooks.items():
            handles = hook.register(layer)
            xin = x.clone().requires_grad_(True)
            (got,) = torch.autograd.grad(layer(xin), xin, r)
            handles.remove()
            want = formula_relevance(name, layer, x, r, low, high)
            err = ((got - want).norm() / want.norm()).item()
            worst = max(worst, err)
            if err > 1e-12:
                raise AssertionError(f"formula of {name} on {type(layer).__name__}: rel err {err:.1e}")
    # Norm on Sum (residual) and on AdaptiveAvgPool2d
    a = torch.randn(2, 3, 4, 4, 2, generator=gen, dtype=torch.float64)
    r = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    for module, fwd, want in [
            (Sum(), lambda m, t: m(t), a * (r / stab(a.sum(-1), 1e-6))[..., None]),
            (nn.AdaptiveAvgPool2d((2, 2)), lambda m, t: m(t[..., 0]),
             None)]:
        handles = Norm().register(module)
        xin = a.clone().requires_grad_(True)
        out = fwd(module, xin)
        rr = r if out.shape == r.shape else torch.randn(out.shape, generator=gen, dtype=torch.float64)
        (got,) = torch.autograd.grad(out, xin, rr)
        handles.remove()
        if want is None:  # avgpool 4x4 -> 2x2: windows of 4, relevance x_i / (4 * stab(mean))
            x0 = a[..., 0]
            s = rr / stab(F.adaptive_avg_pool2d(x0, (2, 2)), 1e-6) / 4
            want = torch.zeros_like(a)
            want[..., 0] = x0 * s.repeat_interleave(2, -1).repeat_interleave(2, -2)
        err = ((got - want).norm() / want.norm()).item()
        worst = max(worst, err)
        if err > 1e-12:
            raise AssertionError(f"formula of Norm on {type(module).__name__}: rel err {err:.1e}")
    return worst


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------

def build(arch_name: str):
    """The fixture model (float32, eval) exactly as make_fixtures.py builds it."""
    arch = next(a for a in mf.ARCHS if a.name == arch_name)
    return mf.prepare_model(arch), arch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-sample relative L2 error of ``a`` against ``b``."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return ((a - b).norm(dim=1) / b.norm(dim=1)).numpy()


def make_refs(arch_name: str) -> dict:
    fix = np.load(os.path.join(FIXTURES, f"{arch_name}.npz"))
    x32 = torch.from_numpy(fix["x"])
    target = torch.from_numpy(fix["target"])
    logits64_ref = torch.from_numpy(fix["logits64"])
    model32, _ = build(arch_name)
    with torch.no_grad():
        logits64 = copy.deepcopy(model32).double()(x32.double())
    err = ((logits64 - logits64_ref).norm() / logits64_ref.norm()).item()
    if err > LOGIT_RTOL:
        raise AssertionError(f"{arch_name}: rebuilt model differs from fixture ({err:.2e})")

    refs = {"x": fix["x"], "target": fix["target"], "logits64": fix["logits64"]}
    uniforms = [False, True] if arch_name in UNIFORM_ARCHS else [False]
    for uniform in uniforms:
        for cname in COMPOSITE_NAMES:
            maps = {}
            for exact_bn in (False, True):
                key = cname + ("_uniform" if uniform else "") + ("_exactbn" if exact_bn else "")
                for dtype in (torch.float64, torch.float32):
                    model = copy.deepcopy(model32).to(dtype)
                    x = x32.to(dtype)
                    canonizers = canonizers_for(arch_name, model, uniform)
                    canonizers += [ExactIdentityBatchNorm()] if exact_bn else []
                    out, rel = attribute(model, x, target, make_composite(cname, canonizers, x))
                    if not torch.isfinite(rel).all():
                        raise AssertionError(f"{arch_name}/{key}: non-finite relevance")
                    # Canonizers must not change the function, except for Zennit's
                    # merged-BN 1/sqrt(1+eps) artefact, which ``exact_bn`` removes.
                    lerr = ((out.double() - logits64_ref).norm() / logits64_ref.norm()).item()
                    limit = (1e-12 if exact_bn else 1e-2) if dtype == torch.float64 else 1e-2
                    if lerr > limit:
                        raise AssertionError(f"{arch_name}/{key}/{dtype}: logits changed {lerr:.1e}")
                    if dtype == torch.float64 and not exact_bn:
                        refs["canon_logit_err64"] = np.float64(lerr)
                    maps[exact_bn, dtype] = rel
                ref64 = maps[exact_bn, torch.float64]
                refs[f"{key}64"] = ref64.numpy().astype(STORE_DTYPE)
                refs[f"{key}32_err"] = rel_err(maps[exact_bn, torch.float32], ref64)
            key = cname + ("_uniform" if uniform else "")
            refs[f"{key}_bn_eps_effect"] = rel_err(maps[True, torch.float64], maps[False, torch.float64])
            total = maps[True, torch.float64].flatten(1).sum(1).numpy()
            e32, e32x = refs[f"{key}32_err"], refs[f"{key}_exactbn32_err"]
            eff = refs[f"{key}_bn_eps_effect"]
            print(f"  {arch_name:14s} {key:30s} f32 err {e32[0]:.1e},{e32[1]:.1e}"
                  f" (exactbn {e32x[0]:.1e},{e32x[1]:.1e})  bn-eps effect {eff[0]:.1e},{eff[1]:.1e}"
                  f"  sum(R) {total[0]:+.4f},{total[1]:+.4f}", flush=True)
    refs["rule_table"] = np.array(rule_rows(arch_name, model32, x32), dtype=str)
    refs["params"] = np.array(json.dumps({
        "zennit": importlib.metadata.version("zennit"),
        "torch": torch.__version__, "epsilon": EPSILON, "stabilizer": STABILIZER,
        "gamma": GAMMA, "zbox_low": BOX_LOW, "zbox_high": BOX_HIGH,
        "zbox_bounds": "elementwise tensors of the input's shape",
        "attr_output": "one-hot(target)",
        "canonizers": [type(c).__name__ for c in canonizers_for(arch_name, model32, False)],
        "uniform_canonizers": ([type(c).__name__ for c in canonizers_for(arch_name, model32, True)]
                               if arch_name in UNIFORM_ARCHS else None),
        "exactbn": "as stock, plus eps=0 on the merged (identity) BatchNorms",
        "storage": "maps computed in float64, stored as float32",
    }))
    return refs


def main() -> None:
    torch.set_num_threads(1)  # as make_fixtures.py: BN calibration must be bit-identical
    tables = "--tables" in sys.argv
    start = time.time()
    print(f"closed-form rule formulas match Zennit (max rel err {check_rule_formulas():.1e})")
    for arch_name in ARCH_NAMES:
        refs = make_refs(arch_name)
        path = os.path.join(FIXTURES, f"{arch_name}_lrp.npz")
        np.savez_compressed(path, **refs)
        print(f"{arch_name}: wrote {path} ({os.path.getsize(path) / 1024:.0f} KB, "
              f"{time.time() - start:.0f} s)", flush=True)
        if tables:
            print(f"\n### {arch_name}\n\n{markdown_table(refs['rule_table'].tolist())}\n")


if __name__ == "__main__":
    main()
