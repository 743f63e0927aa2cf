"""Checks of the model contract shared by every family's tests (tests/models/test_*.py).

Each family file builds its models at tiny size its own way; these functions hold the checks
that are the same for all of them, so a change to the contract is made once."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vitkit import from_pretrained


def save_state(state: dict, path, fmt: str = "safetensors"):
    """Write a state dict as a `.safetensors` or a `.pth` file (the two formats users hold)."""
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def check_grad_checkpointing(
    model, x, family_module, monkeypatch, expected_calls: int, loss_fn: Callable[[object], torch.Tensor]
) -> None:
    """Checkpointing on gives the same outputs (exactly) and gradients as off, runs
    `expected_calls` checkpointed segments per forward pass, and none without autograd."""
    calls = []
    real = family_module.checkpoint
    monkeypatch.setattr(family_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))

    out_plain = model(x)
    loss_fn(out_plain).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert not calls

    model.set_grad_checkpointing(True)
    out_ckpt = model(x)
    loss_fn(out_ckpt).backward()
    assert len(calls) == expected_calls, "gradient checkpointing is not active"
    for a, b in zip(_as_tuple(out_plain), _as_tuple(out_ckpt)):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-5, msg=n)
    calls.clear()
    with torch.no_grad():
        model(x)
    assert not calls


def check_save_roundtrip(model, x, tmp_path, name: str):
    """save_pretrained -> from_pretrained gives the same class, config, name, preprocessing,
    eval mode, state dict and (exactly) the same outputs. Returns the reloaded model."""
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.model_name == name and not loaded.training

    def lists(cfg):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    assert lists(loaded.pretrained_cfg) == lists(model.pretrained_cfg)
    with torch.no_grad():
        for a, b in zip(_as_tuple(loaded(x)), _as_tuple(model(x))):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    return loaded
