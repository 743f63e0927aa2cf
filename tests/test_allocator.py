"""vitkit.allocator: glibc keeps freed blocks for reuse, measured as page faults in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from vitkit import allocator

PROBE = textwrap.dedent("""
    import json, resource, sys, torch
    from vitkit.allocator import reuse_freed_memory

    def faults_of_a_fresh_tensor(mib):  # allocate and touch `mib` MiB, as a training step's activation
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(mib << 18)  # float32: mib MiB
        x.fill_(1.0)
        del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    kept = reuse_freed_memory() if sys.argv[1] == "reuse" else None
    for _ in range(3):  # the first steps grow the heap (small objects can take the freed space once)
        faults_of_a_fresh_tensor(40)
    print(json.dumps({"kept": kept, "faults": [faults_of_a_fresh_tensor(40) for _ in range(5)]}))
""")


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # 40 MiB is above glibc's largest sliding mmap threshold (32 MiB): by default every such block is a
    # fresh mapping, 10,240 pages of 4 KiB to fault in and zero (fewer where huge pages back it)
    default, reuse = probe("glibc"), probe("reuse")
    assert default["kept"] is None and reuse["kept"] == allocator.DEFAULT_THRESHOLD
    assert min(default["faults"]) > 0
    assert sorted(reuse["faults"])[2] <= min(default["faults"]) // 10, (default, reuse)  # the median step


def test_bad_threshold_is_refused():
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError, match="threshold must be between"):
            allocator.reuse_freed_memory(bad)


class _WithUnused(torch.nn.Module):
    """Two layers, one of them unused by forward(): AdamW must leave it alone (no decay, no moments)."""

    def __init__(self) -> None:
        super().__init__()
        self.used = torch.nn.Linear(6, 3)
        self.unused = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def _train(kept: bool, accum: int, fused: bool) -> tuple[dict, torch.optim.Optimizer, list]:
    torch.manual_seed(0)
    model = _WithUnused()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5, fused=fused)
    keeper = allocator.KeptGradients(model.parameters()) if kept else None
    data = torch.randn(4, accum, 5, 6)
    ptrs = []
    for step in range(4):
        for micro in range(accum):  # gradient accumulation: the micro-batches add up in the kept gradients
            model(data[step, micro]).square().mean().backward()
        if keeper is not None:
            keeper.before_step()
        opt.step()
        if keeper is not None:
            ptrs.append(model.used.weight.grad.data_ptr())
            keeper.zero_grad()
        else:
            opt.zero_grad(set_to_none=True)
    return model.state_dict(), opt, ptrs


@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("fused", [False, True])
def test_kept_gradients_train_exactly_as_set_to_none(accum, fused):
    fresh, fresh_opt, _ = _train(kept=False, accum=accum, fused=fused)
    kept, kept_opt, ptrs = _train(kept=True, accum=accum, fused=fused)
    for k in fresh:
        assert torch.equal(fresh[k], kept[k]), k
    torch.manual_seed(0)
    untouched = _WithUnused().unused.state_dict()
    assert torch.equal(kept["unused.weight"], untouched["weight"])  # no weight decay on a parameter without a gradient
    assert len(kept_opt.state) == len(fresh_opt.state) == 2  # moments for the used layer's weight and bias only
    assert len(set(ptrs)) == 1  # one gradient block, kept from step to step


def test_kept_gradients_zero_in_place_and_skip_frozen():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    keeper = allocator.KeptGradients(model.parameters())
    assert model[0].weight.grad is None and torch.equal(model[1].weight.grad, torch.zeros(2, 4))
    model(torch.randn(3, 4)).sum().backward()
    grad = model[1].weight.grad
    assert grad.abs().sum() > 0
    keeper.before_step()
    assert model[1].weight.grad is grad  # used: kept as it is
    keeper.zero_grad()
    assert model[1].weight.grad is grad and not grad.any()
    keeper.before_step()  # no backward since the zeroing: nothing was fed, every gradient goes
    assert model[1].weight.grad is None and model[1].bias.grad is None
    keeper.zero_grad()  # and comes back, zeroed
    assert torch.equal(model[1].bias.grad, torch.zeros(2))
    keeper.close()  # the end of training: gradients None, hooks off
    assert model[1].weight.grad is None and model[1].bias.grad is None
    model(torch.randn(3, 4)).sum().backward()
    keeper.before_step()  # no hooks any more: nothing marks the parameters as fed
    assert model[1].weight.grad is None


def test_kept_gradients_do_not_keep_the_model_alive():
    import gc
    import weakref

    model = torch.nn.Linear(300, 300)
    keeper = allocator.KeptGradients(model.parameters())
    model(torch.randn(2, 300)).sum().backward()
    ref = weakref.ref(model.weight)
    del model, keeper  # no close(): the hooks on the parameters must not hold the keeper (and its list of them)
    gc.collect()
    assert ref() is None
