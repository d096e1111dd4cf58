"""What the LRP graphs keep between the forward and the backward pass.

* Residual branches ``a`` of ``y = relu(a + b)`` are read as ``y - b`` where relevance reaches them
  (``rules/support.residual_operand``), so the forward pass need not keep ``a``: checked against the
  float64 formulas (the Norm rule at the sums, epsilon/gamma/z+ below them), with branch values of both
  signs so that a wrong substitute would show.
* Work of the rules on forward activations waits for the relevance (``compiler/schedule.py``): every
  run-time node an LRP rule emits depends on the explained output's seed; the same numbers with and
  without the hints; CUDA sessions drop the hints (``runtime/cuda_rewrite.for_cuda``) with bit-identical
  outputs.
* Below a ReLU6 whose pre-activation ``z`` the backward pass reads anyway (ε, γ: ``relu(z)``), the next
  layer's rule reads the clipped output as ``clip(z)`` recomputed late (``compiler/schedule.recompute_activations``),
  so the forward pass does not keep both: float64 formulas, the clipped output read by forward nodes
  only, the same numbers on CUDA's unhinted graph.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxplain
from reference import make_model, rel_err, rng, run
from test_lrp_rules import TOL, _support_case, ref_rule, seed, stab


def _residual_mlp(r):
    """x -> fc0 -> relu = h;  s = fc1(h) + h -> relu = y;  s2 = fc3(y) + fc4(y) -> relu = y2;  fc5 -> logits."""
    shapes = {"w0": (6, 5), "w1": (6, 6), "w3": (6, 6), "w4": (6, 6), "w5": (3, 6)}
    inits = {}
    for k, s in shapes.items():
        inits[k] = r.standard_normal(s).astype(np.float32)
        inits["b" + k[1:]] = (0.5 * r.standard_normal(s[0])).astype(np.float32)
    gemm = lambda i, o, k: helper.make_node("Gemm", [i, "w" + k, "b" + k], [o], transB=1, name="fc" + k)  # noqa: E731
    nodes = [gemm("x", "z0", "0"), helper.make_node("Relu", ["z0"], ["h"], name="relu0"),
             gemm("h", "a", "1"), helper.make_node("Add", ["a", "h"], ["s"], name="add1"),
             helper.make_node("Relu", ["s"], ["y"], name="relu1"),
             gemm("y", "c", "3"), gemm("y", "d", "4"), helper.make_node("Add", ["c", "d"], ["s2"], name="add2"),
             helper.make_node("Relu", ["s2"], ["y2"], name="relu2"), gemm("y2", "logits", "5")]
    return make_model(nodes, [("x", ["N", 5])], [("logits", ["N", 3])], inits), inits


def _reference(inits, x, lower, upper, lo_p, up_p):
    """The float64 relevance of x: epsilon at fc0, ``lower`` at fc1/fc3/fc4, ``upper`` at fc5, Norm at the sums."""
    P = {k: v.astype(np.float64) for k, v in inits.items()}
    lin = lambda t, k: t @ P["w" + k].T + P["b" + k]  # noqa: E731
    X = x.astype(np.float64)
    h = np.maximum(lin(X, "0"), 0)
    a = lin(h, "1")
    s = a + h
    y = np.maximum(s, 0)
    c, d = lin(y, "3"), lin(y, "4")
    s2 = c + d
    y2 = np.maximum(s2, 0)
    R = seed(lin(y2, "5"))
    r_s2 = ref_rule(upper, P["w5"], P["b5"], y2, R, **up_p)      # ReLU passes relevance through
    q2 = r_s2 / stab(s2)                                            # Norm (Zennit), eps 1e-6
    r_y = ref_rule(lower, P["w3"], P["b3"], y, c * q2, **lo_p) + ref_rule(lower, P["w4"], P["b4"], y, d * q2, **lo_p)
    q = r_y / stab(s)
    r_h = h * q + ref_rule(lower, P["w1"], P["b1"], h, a * q, **lo_p)
    return ref_rule("lrp.epsilon", P["w0"], P["b0"], X, r_h, epsilon=0.25), (a, s, c, s2)


def _readers(model, tensor):
    return [n.name for n in model.graph.node if tensor in n.input]


@pytest.mark.parametrize("upper", ["lrp.epsilon", "lrp.flat"])
@pytest.mark.parametrize("lower", ["lrp.epsilon", "lrp.gamma", "lrp.z_plus"])
def test_residual_branch_read_as_sum_minus_shortcut(lower, upper):
    r = rng(21)
    model, inits = _residual_mlp(r)
    lo_p = {"gamma": 0.5} if lower == "lrp.gamma" else {"epsilon": 0.25} if lower == "lrp.epsilon" else {}
    up_p = {"epsilon": 0.25} if upper == "lrp.epsilon" else {}
    rules = [{"select": {"name": "fc0"}, "rule": {"name": "lrp.epsilon", "epsilon": 0.25}},
             {"select": {"name": "fc[134]"}, "rule": dict(name=lower, **lo_p)},
             {"select": {"name": "fc5"}, "rule": dict(name=upper, **up_p)},
             {"select": {"op": "Add"}, "rule": "lrp.norm"}]
    compiled = onnxplain.compile(model, "lrp", rules={"rules": rules})
    x = r.standard_normal((16, 5)).astype(np.float32)
    ref, (a, s, c, s2) = _reference(inits, x, lower, upper, lo_p, up_p)
    # branch values of both signs where the sum is positive (a wrong substitute would show), and dead units
    assert ((a < 0) & (s > 0)).any() and ((a > 0) & (s > 0)).any() and (s <= 0).any()
    got = run(compiled, {"x": x})["lrp/x"]
    assert rel_err(got, ref) < TOL
    # the substitution is made exactly where it holds: below the first sum always (its ReLU feeds rules
    # that scale by their input), below the second only when fc5 does (flat gives relevance to zeros)
    assert _readers(compiled, "a") == ["add1"]
    assert (_readers(compiled, "c") == ["add2"]) == (upper == "lrp.epsilon")
    assert len(_readers(compiled, "d")) > 1  # of two eligible inputs only the first is replaced
    assert ((c < 0) & (s2 > 0)).any()


def _depends(model, sources):
    """Tensors that depend on any of ``sources`` (graph order is topological)."""
    dep = set(sources)
    for n in model.graph.node:
        if any(i in dep for i in n.input):
            dep.update(n.output)
    return dep


@pytest.mark.parametrize("method", ["lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"])
def test_rule_work_waits_for_the_relevance(method, monkeypatch):
    """Every node an LRP rule emits that computes on run-time data also depends on the seed of the
    explained output, so ONNX Runtime cannot run it (and keep its output) during the forward pass."""
    import onnxplain.compiler.emit as emit_mod
    from onnxplain.runtime.cuda_rewrite import for_cuda

    r = rng(22)
    model, _ = _residual_mlp(r)
    params = {"low": -3.0, "high": 3.0} if "box" in method else {}
    compiled = onnxplain.compile(model, method, **params)
    seeded = _depends(compiled, [n.output[0] for n in compiled.graph.node if n.name.startswith("onnxplain/target/Mul")])
    runtime = _depends(compiled, ["x"])
    rule_nodes = [n for n in compiled.graph.node if "/lrp." in n.name and n.output[0] in runtime
                  and "/onnxplain.schedule/Shape" not in n.name]  # the hints' own Shape(x): no data
    assert len(rule_nodes) > 20
    early = [n.name for n in rule_nodes if n.output[0] not in seeded]
    assert early == []
    monkeypatch.setattr(emit_mod, "delay_forward_work", lambda *a: 0)
    monkeypatch.setattr(emit_mod, "recompute_activations", lambda *a: 0)
    plain = onnxplain.compile(model, method, **params)
    assert not [n for n in plain.graph.node if "/lrp." in n.name and n.output[0] in _depends(plain, ["x"])
                and n.output[0] not in _depends(plain, [m.output[0] for m in plain.graph.node
                                                        if m.name.startswith("onnxplain/target/Mul")])] == []
    x = r.standard_normal((7, 5)).astype(np.float32)
    want = run(plain, {"x": x})[f"{method}/x"]
    np.testing.assert_allclose(run(compiled, {"x": x})[f"{method}/x"], want, rtol=1e-6, atol=1e-7)
    # CUDA sessions: the hints are removed again, the graph is the plain one (plus the activations read
    # as recomputed from their kept input), bit for bit the same numbers
    recomputed = [n.op_type for n in compiled.graph.node if "/recomputed" in n.name and "schedule" not in n.name]
    for_gpu = onnx.ModelProto()
    for_gpu.CopyFrom(compiled)
    assert for_cuda(for_gpu) == len(compiled.graph.node) - len(plain.graph.node) - len(recomputed) > 0
    onnx.checker.check_model(for_gpu, full_check=True)
    assert sorted(n.op_type for n in for_gpu.graph.node) == sorted([n.op_type for n in plain.graph.node] + recomputed)
    np.testing.assert_array_equal(run(for_gpu, {"x": x})[f"{method}/x"], run(compiled, {"x": x})[f"{method}/x"])


def test_cpu_sessions_without_memory_pattern():
    from onnxplain.runtime.session import make_session

    model, _ = _residual_mlp(rng(23))
    sess = make_session(onnxplain.compile(model, "lrp.epsilon_plus_flat"), ["CPUExecutionProvider"], 1)
    assert sess.get_session_options().enable_mem_pattern is False


def test_compile_for_cuda(tmp_path):
    """``device="cuda"`` / ``onnxplain compile --device cuda``: the file plain onnxruntime-gpu should get
    (no scheduling hints, no MaxUnpool), the same maps bit for bit, metadata ``onnxplain.device``."""
    from onnxplain.cli import main
    from onnxplain.runtime.cuda_rewrite import needs_cuda_rewrite

    r = rng(24)
    model, _ = _residual_mlp(r)
    cpu = onnxplain.compile(model, "lrp.epsilon_gamma_box", low=-3.0, high=3.0)
    gpu = onnxplain.compile(model, "lrp.epsilon_gamma_box", low=-3.0, high=3.0, device="cuda")
    assert needs_cuda_rewrite(cpu) and not needs_cuda_rewrite(gpu)
    assert {p.key: p.value for p in gpu.metadata_props}["onnxplain.device"] == "cuda"
    x = r.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_array_equal(run(gpu, {"x": x})["lrp.epsilon_gamma_box/x"],
                                  run(cpu, {"x": x})["lrp.epsilon_gamma_box/x"])
    src, out = tmp_path / "m.onnx", tmp_path / "m.cuda.onnx"
    onnx.save(model, str(src))
    assert main(["compile", str(src), "-m", "lrp.epsilon_plus_flat", "--device", "cuda", "-o", str(out)]) == 0
    assert not needs_cuda_rewrite(onnx.load(str(out)))
    with pytest.raises(SystemExit):
        main(["compile", str(src), "-m", "gradient", "--device", "tpu", "-o", str(out)])


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("lower", ["lrp.epsilon", "lrp.gamma"])
def test_clipped_output_recomputed_from_kept_preactivation(lower, signed):
    """ε and γ (on a non-negative input) below ``Clip(z, 0, 6)`` read ``relu(z)``, so ``z`` is kept for the
    backward pass; the upper layer's ε then reads its input as ``clip(z, 0, 6)`` recomputed there, and the
    clipped output is read by the forward pass only.  Float64 formulas with pre-activations below 0, in
    (0, 6) and above 6 (recomputing ``relu`` instead of the clip would differ); CUDA's unhinted graph
    gives the same numbers bit for bit."""
    from onnxplain.runtime.cuda_rewrite import for_cuda

    c = _support_case(lower, "lrp.epsilon", relu6=True, signed=signed, seed_=23, n=16, scale=3.0)
    z1 = c["z1"]
    assert (z1 < 0).any() and ((z1 > 0) & (z1 < 6)).any() and (z1 > 6).any()
    assert rel_err(c["got"], c["ref"]) < TOL
    model = c["model"]
    recomputed = [n for n in model.graph.node if n.op_type == "Clip" and "recomputed" in n.name]
    readers = [n.name for n in model.graph.node if "a" in n.input]
    if lower == "lrp.gamma" and signed:  # gamma's groups on a signed input read no relu(z): z is not kept
        assert not recomputed and len(readers) == 2
        return
    assert readers == ["fc1"]  # the forward Gemm only: `a` dies with the forward pass
    assert len(recomputed) == 1 and list(recomputed[0].input[1:]) == ["lo", "hi"]
    for_gpu = onnx.ModelProto()
    for_gpu.CopyFrom(model)
    assert for_cuda(for_gpu) > 0
    assert [n.name for n in for_gpu.graph.node if "a" in n.input] == ["fc1"]
    np.testing.assert_array_equal(run(for_gpu, {"x": c["x"]})["lrp/x"], c["got"])


def test_clipped_output_kept_where_preactivation_is_not():
    """Under lrp.flat at the next layer the clipped output is not read by the backward pass, and nothing is
    recomputed; the pre-activation alone is read (ε's ``relu(z)``)."""
    c = _support_case("lrp.epsilon", "lrp.flat", relu6=True, signed=False, seed_=23, n=16, scale=3.0)
    assert rel_err(c["got"], c["ref"]) < TOL
    assert not [n for n in c["model"].graph.node if "recomputed" in n.name]
