"""The peers of ``bench/run_all.py``: the same methods in Zennit 0.5.1 and Captum, on the PyTorch model.

Each ``make(...)`` returns ``(fn, note, close)``: ``fn()`` computes one batch of maps (forward and
backward included, relevance seeded with the top class as onnxplain does), ``note`` says how the peer
was configured, ``close()`` removes hooks. The model comes frozen (``requires_grad_(False)``) and in
eval mode; the input is a leaf tensor on the benchmark device.

Equivalents (onnxplain -> peer):

* ``gradient``: Zennit ``Gradient`` (no composite); Captum ``Saliency(abs=False)``.
* ``integrated_gradients`` (32 right-Riemann points, zero reference): Zennit ``IntegratedGradients(n_iter=32)``
  (one batch per point: Zennit has no chunking); Captum ``IntegratedGradients(method="riemann_right")`` with
  ``internal_batch_size`` = the images onnxplain evaluates per expansion (chunk x batch).
* ``smoothgrad`` (16 samples, noise 0.1 x value range): Zennit ``SmoothGrad(noise_level=0.1, n_iter=16)``;
  Captum ``NoiseTunnel(Saliency)`` with ``nt_samples=16``, ``nt_samples_batch_size`` = onnxplain's chunk,
  ``stdevs`` = 0.1 x (max - min) of the batch.
* ``guided_backprop``: Zennit composite ``GuidedBackprop``; Captum ``GuidedBackprop`` (both change ReLU
  modules only, as onnxplain changes Relu nodes only).
* ``lrp.epsilon``: Zennit ``LayerMapComposite(layer_map_base() + Epsilon(1e-7) on Conv/Linear)`` with the
  architecture's canonizers; Captum ``LRP`` with its default rules (``EpsilonRule(1e-9)`` on Conv/Linear/
  pooling; it rejects models with modules it has no rule for, e.g. ReLU6).
* ``lrp.epsilon_plus_flat``/``lrp.epsilon_gamma_box`` (low -3, high 3): Zennit's ``EpsilonPlusFlat``/
  ``EpsilonGammaBox`` with the canonizers of ``models/make_zennit_refs.py``; Captum has no Flat/ZBox
  rule and no composites: not run.
* ``deep_taylor``: no direct equivalent in either (Zennit would need a hand-made ZPlus composite): not run.
"""
from __future__ import annotations

#: Which methods each peer runs.
PEER_METHODS = {
    "zennit": ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "gradient", "integrated_gradients", "smoothgrad",
               "guided_backprop", "lrp.epsilon"),
    "captum": ("gradient", "integrated_gradients", "smoothgrad", "guided_backprop", "lrp.epsilon"),
}
BOX = (-3.0, 3.0)


def canonizers(arch: str) -> list:
    """Zennit canonizers per architecture family (as models/make_zennit_refs.py)."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if arch.startswith("vgg"):
        return [VGGCanonizer()]
    if arch.startswith("resnet"):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def _top(model, x):
    import torch

    with torch.no_grad():
        return model(x).argmax(1)


def make(engine: str, method: str, model, x, arch: str, params: dict) -> tuple:
    if method not in PEER_METHODS.get(engine, ()):
        raise ValueError(f"{engine} has no equivalent of {method}")
    return (_zennit if engine == "zennit" else _captum)(method, model, x, arch, params)


def _zennit(method: str, model, x, arch: str, params: dict) -> tuple:
    import torch
    from zennit import attribution as za
    from zennit import composites as zc
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    composite, note = None, f"zennit {method}"
    if method == "lrp.epsilon_plus_flat":
        composite = zc.EpsilonPlusFlat(canonizers=canonizers(arch))
    elif method == "lrp.epsilon_gamma_box":
        composite = zc.EpsilonGammaBox(low=torch.full_like(x, BOX[0]), high=torch.full_like(x, BOX[1]),
                                       canonizers=canonizers(arch))
    elif method == "lrp.epsilon":
        layer_map = zc.layer_map_base() + [(Convolution, Epsilon(epsilon=1e-7)), (torch.nn.Linear, Epsilon(epsilon=1e-7))]
        composite = zc.LayerMapComposite(layer_map=layer_map, canonizers=canonizers(arch))
    elif method == "guided_backprop":
        composite = zc.GuidedBackprop()
    if method == "integrated_gradients":
        attributor = za.IntegratedGradients(model, composite, n_iter=32)
        note = "zennit IntegratedGradients(n_iter=32), one batch per point"
    elif method == "smoothgrad":
        attributor = za.SmoothGrad(model, composite, noise_level=0.1, n_iter=16)
        note = "zennit SmoothGrad(noise_level=0.1, n_iter=16), one batch per sample"
    else:
        attributor = za.Gradient(model, composite)
        if composite is not None:
            note = f"zennit {type(composite).__name__}" + (" + canonizers" if method.startswith("lrp") else "")
    attributor.__enter__()

    def seed(out):
        return torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

    def fn():
        return attributor(x.detach().clone(), seed)[1]

    def close():
        attributor.__exit__(None, None, None)

    return fn, note, close


def _captum(method: str, model, x, arch: str, params: dict) -> tuple:
    from captum import attr as ca

    target = _top(model, x)
    batch = x.shape[0]
    chunk = params.get("chunk", 1)
    if method == "gradient":
        algo, kw, note = ca.Saliency(model), {"abs": False}, "captum Saliency(abs=False)"
    elif method == "integrated_gradients":
        algo = ca.IntegratedGradients(model)
        kw = {"n_steps": 32, "method": "riemann_right", "internal_batch_size": chunk * batch}
        note = f"captum IntegratedGradients(riemann_right, internal_batch_size={chunk * batch})"
    elif method == "smoothgrad":
        sigma = 0.1 * float(x.max() - x.min())
        algo = ca.NoiseTunnel(ca.Saliency(model))
        kw = {"nt_type": "smoothgrad", "nt_samples": 16, "nt_samples_batch_size": chunk, "stdevs": sigma, "abs": False}
        note = f"captum NoiseTunnel(Saliency, nt_samples=16, nt_samples_batch_size={chunk})"
    elif method == "guided_backprop":
        algo, kw, note = ca.GuidedBackprop(model), {}, "captum GuidedBackprop"
    else:  # lrp.epsilon
        algo, kw, note = ca.LRP(model), {}, "captum LRP (default rules: EpsilonRule 1e-9)"

    def fn():
        return algo.attribute(x.detach().clone().requires_grad_(True), target=target, **kw)

    return fn, note, lambda: None
