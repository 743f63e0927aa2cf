"""The CPU GEMM path (vitkit/layers/linear.py): oneDNN's packed kernels compute what `F.linear` computes,
forward and backward, fp32 and bf16 autocast; packed weights follow every in-place update; nothing of it
reaches state dicts; "off" is `F.linear` itself; torch.fx graphs choose at run time as eager does."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import vitkit
from vitkit.layers import Linear, Mlp, cpu_gemm, cpu_gemm_mode
from vitkit.layers import linear as cpu_linear


def _grads(out, tensors, g):
    return torch.autograd.grad(out, [t for t in tensors if t is not None], g)


shapes = st.tuples(
    st.lists(st.integers(1, 9), min_size=1, max_size=2),  # leading dims: 2-D or 3-D inputs
    st.integers(1, 70),  # in features
    st.integers(1, 70),  # out features
    st.booleans(),  # bias
)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_onednn_matches_f_linear_fp32(shape, seed):
    lead, fin, fout, bias = shape
    gen = torch.Generator().manual_seed(seed)
    layer = Linear(fin, fout, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(fout, fin, generator=gen))
    x = torch.randn(*lead, fin, generator=gen, requires_grad=True)
    g = torch.randn(*lead, fout, generator=gen)
    with cpu_gemm("onednn"):
        y = layer(x)
        grads = _grads(y, (x, layer.weight, layer.bias), g)
        with torch.no_grad():
            y_infer = layer(x)
    ref = F.linear(x, layer.weight, layer.bias)
    ref_grads = _grads(ref, (x, layer.weight, layer.bias), g)
    tol = dict(atol=1e-5 * fin, rtol=1e-5)
    torch.testing.assert_close(y, ref, **tol)
    torch.testing.assert_close(y_infer, ref, **tol)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5 * max(fin, fout, x.numel() // fin), rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_onednn_matches_f_linear_bf16_autocast(shape, seed):
    lead, fin, fout, bias = shape
    gen = torch.Generator().manual_seed(seed)
    layer = Linear(fin, fout, bias=bias)
    x = torch.randn(*lead, fin, generator=gen, requires_grad=True)
    g = torch.randn(*lead, fout, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with cpu_gemm("onednn"):
            y = layer(x)
        ref = F.linear(x, layer.weight, layer.bias)
    assert y.dtype == ref.dtype == torch.bfloat16
    grads = _grads(y, (x, layer.weight, layer.bias), g.bfloat16())
    ref_grads = _grads(ref, (x, layer.weight, layer.bias), g.bfloat16())
    torch.testing.assert_close(y.float(), ref.float(), atol=2e-2, rtol=2e-2)
    for got, want, p in zip(grads, ref_grads, (x, layer.weight, layer.bias)):
        assert got.dtype == want.dtype == p.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=3e-2 * max(1.0, want.abs().max().item()), rtol=2e-2)


def test_bf16_weights_without_autocast():
    layer = Linear(24, 40).to(torch.bfloat16)
    x = torch.randn(3, 5, 24, dtype=torch.bfloat16, requires_grad=True)
    with cpu_gemm("onednn"):
        y = layer(x)
        y.sum().backward()
    ref_layer = nn.Linear(24, 40).to(torch.bfloat16)
    ref_layer.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    ref = ref_layer(x_ref)
    ref.sum().backward()
    torch.testing.assert_close(y, ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(layer.weight.grad, ref_layer.weight.grad, atol=5e-2, rtol=2e-2)


def test_off_is_f_linear_and_probes_nothing(monkeypatch):
    cpu_linear.clear_probe_decisions()
    layer = Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    monkeypatch.setenv("VITKIT_CPU_GEMM", "off")
    assert cpu_gemm_mode() == "off"
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert cpu_linear.probe_decisions() == {} and not cpu_linear._PACKED


def test_auto_probes_once_per_shape_class_and_matches():
    cpu_linear.clear_probe_decisions()
    layer = Linear(128, 160)
    x = torch.randn(2, 50, 128, requires_grad=True)
    with cpu_gemm("auto"):
        y = layer(x)
        y.sum().backward()
        decisions = cpu_linear.probe_decisions()
        assert set(decisions) == {(role, torch.float32, 128, 160, 128) for role in ("fwd", "dgrad", "wgrad")}
        layer(torch.randn(2, 60, 128))  # 120 rows: the same class, no new probe
        assert cpu_linear.probe_decisions() == decisions
        small = Linear(16, 16)  # below AUTO_MIN_MACS: F.linear itself, no probe
        xs = torch.randn(3, 16)
        assert torch.equal(small(xs), F.linear(xs, small.weight, small.bias))
        assert cpu_linear.probe_decisions() == decisions
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-5)


def _kernel_calls(fn) -> dict[str, int]:
    """How many times each GEMM kernel ran inside `fn()` (torch's profiler, which leaves the dispatch alone)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    keys = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::mkldnn_linear_backward_weights")
    return {e.key: e.count for e in prof.key_averages() if e.key in keys}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("input_grad", [True, False])
def test_weight_gradient_on_onednn(dtype, input_grad):
    """Mode "onednn" runs all three GEMMs of a training step on oneDNN -- forward, input gradient (when the input
    needs one) and weight gradient -- and the gradients equal F.linear's within rounding (fp32, or fp32
    gradients of fp32 parameters under bf16 autocast)."""
    if dtype is torch.bfloat16 and not cpu_linear._BF16:
        pytest.skip("oneDNN has no bf16 inner product on this CPU")
    gen = torch.Generator().manual_seed(3)
    layer = Linear(48, 80)
    x = torch.randn(2, 37, 48, generator=gen).requires_grad_(input_grad)
    g = torch.randn(2, 37, 80, generator=gen)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16)
    params = [t for t in (x, layer.weight, layer.bias) if t.requires_grad]

    def step():
        with autocast, cpu_gemm("onednn"):
            y = layer(x)
        return torch.autograd.grad(y, params, g.to(y.dtype))

    calls = _kernel_calls(step)
    assert calls.get("mkldnn::_linear_pointwise") == (3 if input_grad else 2), calls
    assert "aten::mm" not in calls and "aten::addmm" not in calls, calls
    grads = step()
    with autocast:
        ref = F.linear(x, layer.weight, layer.bias)
    ref_grads = torch.autograd.grad(ref, params, g.to(ref.dtype))
    tol = dict(atol=1e-4, rtol=1e-5) if dtype is torch.float32 else dict(atol=0.3, rtol=2e-2)
    for got, want, p in zip(grads, ref_grads, params):
        assert got.dtype == want.dtype == p.dtype == torch.float32 and got.shape == p.shape
        torch.testing.assert_close(got, want, **tol)


def test_onednn_weight_gradient_kernel_on_strided_operands():
    """The weight-gradient kernel takes the transposed views of non-contiguous and broadcast operands."""
    gen = torch.Generator().manual_seed(4)
    for dtype in (torch.float32, torch.bfloat16) if cpu_linear._BF16 else (torch.float32,):
        x = torch.randn(40, 24, generator=gen).to(dtype)[::2]  # every other row
        g = torch.randn(20, 1, generator=gen).to(dtype).expand(20, 33)  # stride 0, as sum().backward() gives
        want = g.t().mm(x)
        got = cpu_linear._onednn_wgrad(g, x)
        assert got.dtype == dtype and got.shape == (33, 24)
        torch.testing.assert_close(got.float(), want.float(), atol=1e-4 if dtype is torch.float32 else 0.1, rtol=1e-2)


def test_off_runs_no_onednn_kernel():
    layer = Linear(48, 80)
    x = torch.randn(2, 37, 48, requires_grad=True)

    def step():
        with cpu_gemm("off"):
            layer(x).sum().backward()

    assert "mkldnn::_linear_pointwise" not in _kernel_calls(step)


def test_mode_switches_and_bad_values(monkeypatch):
    monkeypatch.setenv("VITKIT_CPU_GEMM", "onednn")
    assert cpu_gemm_mode() == "onednn"
    with cpu_gemm("off"):  # the context manager overrides the environment
        assert cpu_gemm_mode() == "off"
    assert cpu_gemm_mode() == "onednn"
    monkeypatch.setenv("VITKIT_CPU_GEMM", "fast")
    with pytest.raises(ValueError, match="'fast'.*'off', 'auto', 'onednn'.*VITKIT_CPU_GEMM"):
        Linear(4, 4)(torch.randn(2, 4))
    with pytest.raises(ValueError, match="unknown CPU GEMM mode 'mkl'"):
        with cpu_gemm("mkl"):
            pass
    with pytest.raises(ValueError, match="unknown GEMM role 'bwd'.*'fwd', 'dgrad', 'wgrad'"):
        cpu_linear.use_onednn("bwd", torch.float32, 64, 32, 32, "onednn")


def test_packed_weights_follow_optimizer_steps_and_loads():
    torch.manual_seed(0)
    model = Mlp(32, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(2, 10, 32)
    with cpu_gemm("onednn"):
        for _ in range(3):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():  # inference right after the step: no stale packed weight
                torch.testing.assert_close(model(x), _plain_mlp(model, x), atol=1e-5, rtol=1e-5)
        other = Mlp(32, 64)
        model.load_state_dict(other.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x), _plain_mlp(other, x), atol=1e-5, rtol=1e-5)
            model.fc1.weight.mul_(2)  # any in-place edit
            torch.testing.assert_close(model(x), _plain_mlp(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opt", ["adamw_fused", "sgd_fused", "adamw_foreach"])
def test_packed_weights_follow_fused_optimizer_steps(opt):
    """The fused kernels update parameters in place without bumping `_version`: the optimizer-step count in
    the stamp makes the next call repack (vitkit's training uses AdamW(fused=True))."""
    torch.manual_seed(0)
    model = Mlp(32, 64)
    make = {
        "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
        "sgd_fused": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, fused=True),
        "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=0.1, foreach=True),
    }[opt]
    optimizer = make(model.parameters())
    x = torch.randn(2, 10, 32)
    with cpu_gemm("onednn"):
        for _ in range(3):
            before = model.fc1.weight.detach().clone()
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            assert not torch.equal(before, model.fc1.weight)
            with torch.no_grad():
                torch.testing.assert_close(model(x), _plain_mlp(model, x), atol=1e-5, rtol=1e-5)


def test_packed_weights_follow_data_swaps():
    layer = Linear(32, 48)
    x = torch.randn(5, 32)
    with cpu_gemm("onednn"), torch.no_grad():
        layer(x)
        for _ in range(3):  # `.data =` keeps `_version`; the storage changes
            layer.weight.data = torch.randn(48, 32)
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
        layer.double().float()  # module.to() swaps `.data` too
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


def _plain_mlp(m: Mlp, x: torch.Tensor) -> torch.Tensor:
    return F.linear(m.act(F.linear(x, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)


def test_weights_made_in_inference_mode():
    with torch.inference_mode(), cpu_gemm("onednn"):
        layer = Linear(12, 20)
        x = torch.randn(3, 12)
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


def test_state_dict_deepcopy_and_pickle_see_a_plain_linear():
    layer, ref = Linear(12, 20), nn.Linear(12, 20)
    with cpu_gemm("onednn"), torch.no_grad():
        layer(torch.randn(3, 12))  # packs the weight
    assert list(layer.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert isinstance(layer, nn.Linear) and not list(layer.buffers())
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    assert set(torch.load(io.BytesIO(buf.getvalue()))) == {"weight", "bias"}
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        with cpu_gemm("onednn"), torch.no_grad():
            x = torch.randn(3, 12)
            torch.testing.assert_close(clone(x), F.linear(x, layer.weight, layer.bias))


def test_model_state_dict_keys_unchanged():
    model = vitkit.create_model("vit_micro_patch4_28", pretrained="")
    keys = list(model.state_dict())
    with cpu_gemm("onednn"), torch.no_grad():
        model(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert list(model.state_dict()) == keys
    assert any(isinstance(m, Linear) for m in model.modules())


# one micro model of each family whose Linear layers are vitkit's (MAE: the pre-training model, types only)
FAMILY_MODELS = [
    "vit_micro_patch2_8",
    "deit_micro_distilled_patch4_28",
    "cvt_micro_28",
    "dvt_micro_28",
    "mixer_micro_patch4_28",
    "mvit_micro_28",
    "swin_micro_patch2_window7_28",
    "timesformer_micro_patch4_28",
    "vivit_micro_4x2_28",
    "resnet_micro_28",
]


def _family_input(model: nn.Module) -> torch.Tensor:
    c, h, w = model.pretrained_cfg["input_size"]
    frames = getattr(model.config, "num_frames", None)
    shape = (2, c, h, w) if frames is None else (2, c, frames, h, w)
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def _flat(out) -> torch.Tensor:
    return torch.cat([o.flatten() for o in out]) if isinstance(out, (list, tuple)) else out.flatten()


@pytest.mark.parametrize("name", [*FAMILY_MODELS, "mae_vit_micro_patch4_28"])
def test_every_family_builds_its_linear_layers_as_vitkit_linear(name):
    model = vitkit.create_model(name, pretrained="")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is Linear for m in linears), [type(m) for m in linears]
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(3)
        assert all(type(m) is Linear for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_every_family_runs_every_linear_call_on_onednn_with_plain_results(name):
    """Forced onto oneDNN, each family's Linear calls all run there (profiler count = forward-hook count), and
    outputs and gradients equal the plain path's within fp32 rounding."""
    torch.manual_seed(0)
    model = vitkit.create_model(name, pretrained="", num_classes=5).eval()
    with torch.no_grad():  # zero-initialised heads would make the comparison vacuous
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.02)
    x = _family_input(model)
    calls = [0]
    hooks = [
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        for m in model.modules()
        if isinstance(m, Linear)
    ]

    def forward():
        with cpu_gemm("onednn"), torch.no_grad():
            model(x)

    kernels = _kernel_calls(forward)
    for h in hooks:
        h.remove()
    assert calls[0] > 0 and kernels.get("mkldnn::_linear_pointwise") == calls[0], (calls, kernels)

    results = {}
    for mode in ("off", "onednn"):
        model.zero_grad(set_to_none=True)
        with cpu_gemm(mode):
            out = _flat(model(x))
        out.square().sum().backward()
        results[mode] = (out.detach(), {k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results["onednn"][0], results["off"][0], atol=1e-5, rtol=1e-4)
    assert results["onednn"][1].keys() == results["off"][1].keys()
    for k, g in results["off"][1].items():
        torch.testing.assert_close(results["onednn"][1][k], g, atol=1e-4, rtol=1e-3, msg=k)


def test_fx_graph_chooses_at_run_time():
    mlp = Mlp(16, 32).eval()
    gm = torch.fx.symbolic_trace(mlp)
    assert any(n.op == "call_function" and n.target is cpu_linear.linear for n in gm.graph.nodes)
    x = torch.randn(2, 7, 16)
    for mode in ("off", "onednn"):
        with cpu_gemm(mode), torch.no_grad():
            assert torch.equal(gm(x), mlp(x))


def test_export_holds_plain_linear():
    mlp = Mlp(16, 32).eval()
    x = torch.randn(2, 7, 16)
    with cpu_gemm("onednn"):
        ep = torch.export.export(mlp, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "aten.linear.default" in targets and not any("mkldnn" in t for t in targets)
    torch.testing.assert_close(ep.module()(x), mlp(x))


def test_training_step_matches_plain_path():
    torch.manual_seed(0)
    base = vitkit.create_model("vit_micro_patch4_28", pretrained="", num_classes=5)
    x, y = torch.randn(4, *base.pretrained_cfg["input_size"]), torch.randint(0, 5, (4,))
    after = {}
    for mode in ("off", "onednn"):
        model = copy.deepcopy(base).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with cpu_gemm(mode):
            for _ in range(2):
                F.cross_entropy(model(x), y).backward()
                opt.step()
                opt.zero_grad()
        after[mode] = model.state_dict()
    for k, v in after["off"].items():
        torch.testing.assert_close(after["onednn"][k], v, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_take_f_linear():
    layer = Linear(8, 8).cuda()
    x = torch.randn(4, 8, device="cuda")
    with cpu_gemm("onednn"):
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    assert not cpu_linear._PACKED or all(e[0]() is not layer.weight for e in cpu_linear._PACKED.values())


def test_flop_counter_sees_aten_linear_whatever_the_mode():
    """A dispatch mode such as FlopCounterMode gets F.linear's aten ops, so FLOP counts (vitkit.profile.gmacs)
    do not depend on which GEMM path the probe chose."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitkit.layers import Linear, cpu_gemm

    layer = Linear(256, 512)
    x = torch.randn(4096, 256)
    counts = []
    for mode in ("off", "onednn"):
        with cpu_gemm(mode), FlopCounterMode(display=False) as counter, torch.no_grad():
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 4096 * 256 * 512


def test_backward_weights_primitive_on_strided_operands():
    """oneDNN's backward-weights primitive, the other fp32 weight-gradient kernel "auto" may take, gives
    grad_out^T @ x on non-contiguous and broadcast operands."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(40, 24, generator=gen)[::2]
    g = torch.randn(20, 1, generator=gen).expand(20, 33)
    w = torch.randn(33, 24, generator=gen)
    got = cpu_linear.WGRAD_KERNELS["backward_weights"](g, x, w)
    assert got.dtype == torch.float32 and got.layout == torch.strided and got.shape == (33, 24)
    torch.testing.assert_close(got, g.t().mm(x), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kernel", ["inner_product", "backward_weights"])
def test_each_weight_gradient_kernel_trains_as_the_plain_path(kernel):
    """With "auto" holding a choice of either oneDNN weight-gradient kernel for a layer's shape class (and the
    plain path for its forward and input gradient), its gradients are those of the plain path, and exactly that
    kernel runs once."""
    torch.manual_seed(0)
    layer = Linear(96, 80)
    x = torch.randn(4, 64, 96, requires_grad=True)
    with cpu_gemm("off"):
        layer(x).square().sum().backward()
    want = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    cpu_linear.clear_probe_decisions()
    key = ("wgrad", torch.float32, 96, 80, 256)
    try:
        cpu_linear._DECISIONS[key] = True
        cpu_linear._WGRAD_CHOICE[key] = kernel
        for role in ("fwd", "dgrad"):
            cpu_linear._DECISIONS[(role, torch.float32, 96, 80, 256)] = False
        for t in (x, layer.weight, layer.bias):
            t.grad = None
        with cpu_gemm("auto"):
            assert cpu_linear.wgrad_kernel(torch.float32, 256, 96, 80) == kernel
            calls = _kernel_calls(lambda: layer(x).square().sum().backward())
        for t, w in zip((x, layer.weight, layer.bias), want):
            torch.testing.assert_close(t.grad, w, atol=1e-4, rtol=1e-5)
        primitive, inner = (
            calls.get("aten::mkldnn_linear_backward_weights", 0),
            calls.get("mkldnn::_linear_pointwise", 0),
        )
        assert (primitive, inner) == ((1, 0) if kernel == "backward_weights" else (0, 1)), calls
    finally:
        cpu_linear.clear_probe_decisions()


def test_bf16_takes_f_linear_where_onednn_has_no_bf16(monkeypatch):
    """On a CPU whose oneDNN has no bf16 inner product (AVX2 only), bf16 calls take F.linear in every mode
    instead of failing in the packing."""
    monkeypatch.setattr(cpu_linear, "_BF16", False)
    layer = Linear(96, 80)
    x = torch.randn(4, 64, 96, requires_grad=True)
    for mode in ("auto", "onednn"):
        with cpu_gemm(mode), torch.autocast("cpu", dtype=torch.bfloat16):
            calls = _kernel_calls(lambda: layer(x).float().sum().backward())
        assert "mkldnn::_linear_pointwise" not in calls, (mode, calls)
