"""The measured attention-path policy (vitkit/layers/attention.py): short bf16 sequences on every CPU kind,
and short fp32 sequences on AVX2-only CPUs, take the eager path below `SDPA_MIN_SEQ_LEN` (per training /
inference), and every path gives the same outputs."""

from __future__ import annotations

import pytest
import torch

import vitkit
from vitkit.layers import Attention, eager_attention
from vitkit.layers.attention import (
    SDPA_MIN_SEQ_LEN,
    attention_policy,
    cpu_attention_table,
    use_fused_attention,
)

BF16_CPU = ("cpu", torch.bfloat16, "infer")
FP32_CPU = ("cpu", torch.float32, "infer")


@pytest.fixture(params=["measured", "no-amx"])
def threshold(request, monkeypatch):
    """The bf16 CPU inference threshold: this machine's table as it stands (145 on an AMX CPU or a Zen 4,
    393 on an AVX2-only CPU), and the AVX2 entry of 393 set by hand, so both values are tested everywhere."""
    if request.param == "no-amx":
        monkeypatch.setitem(SDPA_MIN_SEQ_LEN, BF16_CPU, 393)
    return SDPA_MIN_SEQ_LEN.get(BF16_CPU, 1)


def q_of(n: int, dtype=torch.float32, device="cpu", requires_grad=False) -> torch.Tensor:
    return torch.empty(1, 2, n, 8, dtype=dtype, device=device, requires_grad=requires_grad)


def test_table_entry_matches_the_cpu():
    from vitkit.layers.attention import _cpu_has_amx, _cpu_has_avx512

    assert SDPA_MIN_SEQ_LEN == cpu_attention_table(_cpu_has_amx(), _cpu_has_avx512())
    assert BF16_CPU in SDPA_MIN_SEQ_LEN  # bf16 short sequences run eager on every CPU kind measured


def test_measured_tables_per_cpu():
    amx = cpu_attention_table(amx=True, avx512=True)  # AMX tiles: eager for short bf16 sequences
    assert amx == {("cpu", torch.bfloat16, "infer"): 145, ("cpu", torch.bfloat16, "train"): 513}
    zen4 = cpu_attention_table(amx=False, avx512=True)  # AVX-512, no AMX (Zen 4): short sequences eager in both dtypes
    assert zen4 == {
        ("cpu", torch.float32, "infer"): 65,
        ("cpu", torch.float32, "train"): 145,
        ("cpu", torch.float32, "train", 64): 197,
        ("cpu", torch.bfloat16, "infer"): 145,
        ("cpu", torch.bfloat16, "infer", 64): 577,
        ("cpu", torch.bfloat16, "train"): 785,
    }
    avx2 = cpu_attention_table(amx=False, avx512=False)  # AVX2 only: short fp32 sequences eager too
    assert avx2[("cpu", torch.float32, "infer")] == 65 and avx2[("cpu", torch.float32, "train")] == 145
    assert avx2[("cpu", torch.bfloat16, "infer")] == 393


def test_an_entry_for_the_head_width_takes_precedence(monkeypatch):
    """Zen 4, bf16 inference: heads of 64 run eager up to N = 576, narrower heads SDPA from 145."""
    for key in list(SDPA_MIN_SEQ_LEN):
        monkeypatch.delitem(SDPA_MIN_SEQ_LEN, key)
    for key, value in cpu_attention_table(amx=False, avx512=True).items():
        monkeypatch.setitem(SDPA_MIN_SEQ_LEN, key, value)

    def q(n: int, head_dim: int) -> torch.Tensor:
        return torch.empty(1, 2, n, head_dim, dtype=torch.bfloat16)

    assert use_fused_attention(q(197, 32)) and use_fused_attention(q(197, 16)) and not use_fused_attention(q(100, 32))
    assert not use_fused_attention(q(197, 64)) and not use_fused_attention(q(576, 64))
    assert use_fused_attention(q(577, 64))
    fp32 = torch.empty(1, 2, 145, 32, requires_grad=True), torch.empty(1, 2, 145, 64, requires_grad=True)
    assert use_fused_attention(fp32[0]) and not use_fused_attention(fp32[1])  # training: heads of 64 from 197


def test_training_and_inference_thresholds_differ(monkeypatch):
    for key, value in cpu_attention_table(amx=False, avx512=False).items():
        monkeypatch.setitem(SDPA_MIN_SEQ_LEN, key, value)
    assert not use_fused_attention(q_of(17)) and use_fused_attention(q_of(65))  # inference: from 65 on
    assert not use_fused_attention(q_of(100, requires_grad=True))  # training: eager below 145
    assert use_fused_attention(q_of(145, requires_grad=True))
    with torch.no_grad():  # no graph is recorded: inference timing applies
        assert use_fused_attention(q_of(100, requires_grad=True))


def test_auto_policy_follows_the_table(threshold):
    fp32 = SDPA_MIN_SEQ_LEN.get(FP32_CPU, 1)  # CPUs without AMX: 65, AMX: no entry
    for n in (1, 197, max(1, threshold - 1), threshold, 785, 4096):
        assert use_fused_attention(q_of(n)) == (n >= fp32)
        assert use_fused_attention(q_of(n, torch.bfloat16)) == (n >= threshold)
        assert use_fused_attention(q_of(n, torch.bfloat16, "meta"))  # devices without an entry: SDPA
    with attention_policy("fused"):
        assert use_fused_attention(q_of(197, torch.bfloat16))
    with attention_policy("eager"):
        assert not use_fused_attention(q_of(4096))
    with eager_attention():
        assert not use_fused_attention(q_of(4096, torch.bfloat16))
    assert use_fused_attention(q_of(197, torch.bfloat16)) == (197 >= threshold)  # restored to "auto"
    with pytest.raises(ValueError, match="unknown attention policy 'fast'"), attention_policy("fast"):
        pass


@pytest.mark.parametrize("n", [50, 400])  # one sequence length on each side of the non-AMX threshold
def test_paths_agree_in_bf16(n, threshold):
    torch.manual_seed(0)
    attn = Attention(64, num_heads=4).eval()
    x = torch.randn(2, n, 64)
    with torch.inference_mode():
        ref = attn(x)  # fp32
        out = {}
        for policy in ("auto", "fused", "eager"):
            with attention_policy(policy), torch.autocast("cpu", dtype=torch.bfloat16):
                out[policy] = attn(x).float()
    scale = ref.abs().max().item()
    for policy, y in out.items():
        assert (y - ref).abs().max().item() < 0.02 * scale, policy  # bf16 rounding only
    expected = "fused" if n >= threshold else "eager"
    torch.testing.assert_close(out["auto"], out[expected], atol=0, rtol=0)  # auto ran the path the table names


def test_vit_bf16_logits_agree_across_paths():
    torch.manual_seed(0)
    model = vitkit.create_model("vit_micro_patch4_28").eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        ref = model(x)
        for policy in ("auto", "fused", "eager"):
            with attention_policy(policy), torch.autocast("cpu", dtype=torch.bfloat16):
                y = model(x).float()
            assert (y - ref).abs().max().item() < 0.05 * ref.abs().max().item(), policy
            assert (y.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.75, policy
