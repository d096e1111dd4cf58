"""Provider selection and the IO-binding path of the runtime (CUDA code paths exercised on the CPU).

ONNX Runtime's IO binding works on the CPU provider too: inputs bound as CPU ``OrtValue``s or by
pointer, outputs bound to the CPU. The maps are compared with a float64 NumPy gradient of an MLP written
from the chain rule, and with the plain ``session.run`` path. The GPU itself is exercised by
``bench/gpu/device_run.sh`` (sanity section), not here: this machine has no GPU.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from nets import mlp
from onnxplain.compiler.errors import InputError
from onnxplain.runtime import device
from onnxplain.runtime.session import CompiledRunner, default_providers, providers_for
from reference import rng

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def net():
    model, layers = mlp(seed=1, sizes=(6, 8, 5))
    return onnxplain.compile(model, "gradient"), layers


def grad64(layers, x, target):
    """d logit[target] / dx of the ReLU MLP, float64, by the chain rule."""
    acts, a = [], x.astype(np.float64)
    for w, b in layers[:-1]:
        a = np.maximum(a @ w.T.astype(np.float64) + b, 0)
        acts.append(a)
    g = np.eye(layers[-1][0].shape[0])[target] @ layers[-1][0].astype(np.float64)
    for (w, _), a in zip(reversed(layers[:-1]), reversed(acts)):
        g = (g * (a > 0)) @ w.astype(np.float64)
    return g


def test_default_providers_order():
    assert default_providers(["CPUExecutionProvider"]) == CPU
    assert default_providers(["AzureExecutionProvider", "CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider"])[-1] == "CPUExecutionProvider"
    assert default_providers() == (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in
                                   ort.get_available_providers() else []) + CPU


def test_providers_for():
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for("cpu", gpu) == CPU
    assert providers_for(None, gpu) == gpu and providers_for("auto", CPU) == CPU
    assert providers_for("cuda:1", gpu) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    with pytest.raises(InputError, match="onnxruntime-gpu"):
        providers_for("cuda", CPU)
    with pytest.raises(InputError, match="unknown device"):
        providers_for("tpu", gpu)
    with pytest.raises(InputError, match="integer"):
        providers_for("cuda:x", gpu)


def test_ortvalue_inputs_bound_and_kept(net):
    model, layers = net
    runner = CompiledRunner(model, CPU, 1)
    x = rng(2).standard_normal((4, 6)).astype(np.float32)
    t = np.array([0, 4, 2, 1])
    plain = runner.run({"x": x}, t)
    bound = runner.run({"x": ort.OrtValue.ortvalue_from_numpy(x)}, ort.OrtValue.ortvalue_from_numpy(t))
    assert all(isinstance(v, ort.OrtValue) for v in bound.values())
    expect = grad64(layers, x, t)
    np.testing.assert_allclose(bound["gradient/x"].numpy(), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(bound["gradient/x"].numpy(), plain["gradient/x"])
    np.testing.assert_array_equal(bound["logits"].numpy(), plain["logits"])
    host_target = runner.run({"x": ort.OrtValue.ortvalue_from_numpy(x)}, [0, 4, 2, 1])  # host target, bound input
    np.testing.assert_array_equal(host_target["gradient/x"].numpy(), plain["gradient/x"])


def test_pointer_binding(net):
    """The path used for GPU arrays: bind_input by pointer, here on host memory."""
    model, layers = net
    runner = CompiledRunner(model, CPU, 1)
    x = rng(3).standard_normal((3, 6)).astype(np.float32)
    feeds = {"x": device.BoundTensor("cpu", 0, np.dtype(np.float32), x.shape, x.ctypes.data, x)}
    outs = device.bind_run(runner.session, feeds)
    got = dict(zip(runner.output_names, outs))["gradient/x"].numpy()
    top = (x.astype(np.float64) @ layers[0][0].T + layers[0][1]).clip(0) @ layers[1][0].T + layers[1][1]
    np.testing.assert_allclose(got, grad64(layers, x, top.argmax(1)), rtol=1e-5, atol=1e-6)
    t = np.array([4, 0, 2], np.int64)  # the optional `target` input (an overridable initializer) by pointer too
    feeds["target"] = device.BoundTensor("cpu", 0, np.dtype(np.int64), t.shape, t.ctypes.data, t)
    got = dict(zip(runner.output_names, device.bind_run(runner.session, feeds)))["gradient/x"].numpy()
    np.testing.assert_allclose(got, grad64(layers, x, t), rtol=1e-5, atol=1e-6)


def test_device_input_checks(net):
    runner = CompiledRunner(net[0], CPU, 1)
    with pytest.raises(InputError, match="dtype float32"):
        runner.run({"x": ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 6)))})
    with pytest.raises(InputError, match="expected shape"):
        runner.run({"x": ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 7), np.float32))})
    with pytest.raises(InputError, match="int64 of shape"):
        runner.run({"x": ort.OrtValue.ortvalue_from_numpy(np.zeros((2, 6), np.float32))},
                   ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.int64)))


def test_c_contiguity_check():
    class FakeGpuArray:  # what CuPy/torch expose; the pointer is never dereferenced here
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (1234, False),
                                    "strides": (4, 8), "version": 2}

    with pytest.raises(InputError, match="not C-contiguous"):
        device.describe("x", FakeGpuArray())
    FakeGpuArray.__cuda_array_interface__ = dict(FakeGpuArray.__cuda_array_interface__, strides=(12, 4))
    bound = device.describe("x", FakeGpuArray())
    assert (bound.device_type, bound.shape, bound.ptr, bound.dtype) == ("cuda", (2, 3), 1234, np.float32)
    assert device.is_device_value(FakeGpuArray()) and not device.is_device_value(np.zeros(2))


def test_device_array_interface():
    v = ort.OrtValue.ortvalue_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    a = device.DeviceArray(v)
    cai = a.__cuda_array_interface__
    assert cai["shape"] == (2, 3) and cai["typestr"] == "<f4" and cai["data"][0] == v.data_ptr()
    np.testing.assert_array_equal(np.asarray(a), np.arange(6).reshape(2, 3))


def test_explainer_batches_and_ortvalue(net):
    model, layers = net
    x = rng(4).standard_normal((5, 6)).astype(np.float32)
    t = np.array([1, 2, 3, 4, 0])
    exp = onnxplain.Explainer(net[0], "gradient", device="cpu", batch_size=2)
    np.testing.assert_allclose(exp.explain(x, t)["gradient"], grad64(layers, x, t), rtol=1e-5, atol=1e-6)
    whole = onnxplain.Explainer(net[0], "gradient", device="cpu", batch_size=8)
    out = whole.explain(ort.OrtValue.ortvalue_from_numpy(x), t)["gradient"]
    np.testing.assert_allclose(out.numpy(), grad64(layers, x, t), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="cannot be split"):
        exp.explain(ort.OrtValue.ortvalue_from_numpy(x), t)


def test_package_does_not_import_torch():
    code = ("import sys, numpy as np, onnxruntime as ort, onnxplain\n"
            "e = onnxplain.Explainer('onnxplain/data/digits_mlp.onnx', 'gradient', device='cpu')\n"
            "x = np.zeros((2, 1, 8, 8), np.float32)\n"
            "e.explain(ort.OrtValue.ortvalue_from_numpy(x)); e.explain(x)\n"
            "assert 'torch' not in sys.modules and 'cupy' not in sys.modules\n")
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_wrap_outputs_currency():
    """OrtValue inputs -> OrtValues; other GPU arrays -> DeviceArray views of the same buffers."""
    vals = [ort.OrtValue.ortvalue_from_numpy(np.arange(4, dtype=np.float32).reshape(2, 2))]

    class FakeCupy:
        __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (1, False), "version": 2}

    assert device.wrap_outputs(vals, vals[0], ("cuda", 0))[0] is vals[0]
    assert device.wrap_outputs(vals, None, ("cpu", 0))[0] is vals[0]
    wrapped = device.wrap_outputs(vals, FakeCupy(), ("cuda", 1))[0]
    assert isinstance(wrapped, device.DeviceArray) and wrapped.device_id == 1
    assert wrapped.__cuda_array_interface__["data"][0] == vals[0].data_ptr() and wrapped.shape == (2, 2)


def test_maxunpool_rewritten_for_cuda():
    """ONNX Runtime's CUDA provider has no MaxUnpool kernel: sessions on CUDA get the equivalent
    ScatterElements (runtime/cuda_rewrite.py, applied by make_session when CUDA is among the providers).
    Checked on the CPU: the same numbers bit for bit (the compiled maps themselves are checked against
    float64 references in the method tests), valid ONNX, no MaxUnpool left, file path or bytes."""
    import onnx
    from onnx import helper

    import onnxplain
    from onnxplain.runtime.cuda_rewrite import for_cuda
    from reference import make_model, rng, run

    r = rng(5)
    w = r.standard_normal((4, 2, 3, 3)).astype(np.float32)
    w2 = r.standard_normal((3, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["z"], ["a"], name="relu"),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1, name="fc")]
    model = make_model(nodes, [("x", ["N", 2, 4, 4])], [("logits", ["N", 3])], {"w": w, "w2": w2})
    compiled = onnxplain.compile(model, ["gradient", "smoothgrad"], samples=4, chunk=2)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node) + sum(  # noqa: E731
        k.op_type == op for n in m.graph.node for a in n.attribute if a.name == "body" for k in a.g.node)
    assert count(compiled, "MaxUnpool") == 2  # main graph and the SmoothGrad loop body
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(compiled)
    assert for_cuda(rewritten) == 2
    assert count(rewritten, "MaxUnpool") == 0 and count(rewritten, "ScatterElements") == 2
    onnx.checker.check_model(rewritten, full_check=True)
    x = r.standard_normal((5, 2, 4, 4)).astype(np.float32)
    a, b = run(compiled, {"x": x}), run(rewritten, {"x": x})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert np.abs(a["gradient/x"]).max() > 0
    from onnxplain.runtime.session import _cuda_ready
    ready = onnx.load_from_string(_cuda_ready(compiled.SerializeToString()))
    assert count(ready, "MaxUnpool") == 0 and count(ready, "ScatterElements") == 2
    assert _cuda_ready(compiled) == ready.SerializeToString()  # a ModelProto: the same, and not changed
    assert count(compiled, "MaxUnpool") == 2
    plain = onnxplain.compile(mlp(seed=1, sizes=(6, 8, 5))[0], "gradient")  # no MaxUnpool: unchanged
    assert _cuda_ready(plain.SerializeToString()) == plain.SerializeToString()
