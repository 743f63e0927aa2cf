"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for training, and the channels-last decision.

`--run.fsdp=true` under torchrun shards the parameters, gradients and optimizer state over the processes
instead of replicating them (DDP): each process holds 1/N of them, so a model N times larger fits. The
runner calls:

- `shard(model, mixed_precision)` once, after the model is on its device and before the optimizer is built;
- `no_sync(model, active)` around the backward of a micro-batch that is not the last of an optimizer step
  (gradient accumulation), for an FSDP or a DDP model alike;
- `full_state_dict(model)` / `optimizer_state_dict(model, optimizer)` to checkpoint: collectives (every
  process calls them) that return full, unsharded CPU tensors on rank 0 and an empty dict on the others, so
  the checkpoint's weights are the file a one-process run writes;
- `load_full_state_dict(model, sd)` / `load_optimizer_state_dict(model, optimizer, sd)` to resume: rank 0's
  dicts are broadcast and sharded, the other processes pass anything (an empty dict).

The optimizer state dict is torch.distributed.checkpoint's full form (state keyed by parameter name);
`optimizer_state_dict` gives the same form for an unsharded model, and `load_optimizer_state_dict` loads it
into a sharded or an unsharded model's optimizer.

Gradient clipping needs no change: `torch.nn.utils.clip_grad_norm_` on sharded (DTensor) gradients
computes the norm over every shard; the norm it returns is a DTensor (`grad_norm(norm)` gives the float).

`use_channels_last(setting, model, device)` decides `--run.channels_last`: `auto` is true on CUDA for models
with 2-D convolutions beyond a patchify stem (the ResNet of the R50 hybrid ViT, CvT's convolutional
embeddings and projections, the CNNs), where cuDNN's NHWC kernels are faster; a patch embedding alone
(kernel = stride) gains nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Methods besides forward that the runner and vitkit's methods call on a model; a sharded model gathers
# its parameters for them too.
FORWARD_METHODS = ("forward_features", "forward_head", "forward_intermediates")


def _fsdp():
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6 keeps it under _composable
        raise ImportError(
            f"--run.fsdp=true needs torch >= 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}"
        ) from None
    return FSDPModule, MixedPrecisionPolicy, fully_shard


def is_sharded(module: nn.Module) -> bool:
    """Whether `shard` (or any `fully_shard`) has wrapped `module`."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(module, FSDPModule)


def shard_units(module: nn.Module, min_params: int = 1_000_000) -> list[nn.Module]:
    """The submodules `shard` wraps on their own, deepest first: every item of a `blocks` (or `*_blocks`)
    ModuleList or Sequential anywhere in the model (ViT's blocks, each Swin/CvT/DVT stage's blocks, the MAE
    decoder's); a model with none: every leaf module with at least `min_params` parameters."""
    units: list[tuple[int, nn.Module]] = []
    for name, child in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        if (
            name
            and (last == "blocks" or last.endswith("_blocks"))
            and isinstance(child, (nn.ModuleList, nn.Sequential))
        ):
            units += [(name.count(".") + 1, block) for block in child]
    if not units:
        units = [
            (name.count("."), m)
            for name, m in module.named_modules()
            if name and not any(True for _ in m.children()) and sum(p.numel() for p in m.parameters()) >= min_params
        ]
    units.sort(key=lambda u: -u[0])  # fully_shard goes bottom-up: a unit inside another is wrapped first
    return [m for _, m in units]


def _policy(mixed_precision: Any):
    _, MixedPrecisionPolicy, _ = _fsdp()
    if mixed_precision is None or isinstance(mixed_precision, MixedPrecisionPolicy):
        return mixed_precision or MixedPrecisionPolicy()
    if isinstance(mixed_precision, torch.dtype):
        # compute in the low precision, reduce the gradients in fp32: what autocast training does
        return MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
    raise TypeError(
        f"shard(mixed_precision=...) takes None, a torch dtype (torch.bfloat16) or a "
        f"torch.distributed.fsdp.MixedPrecisionPolicy, got {mixed_precision!r}"
    )


def shard(
    module: nn.Module, mixed_precision: Any = None, reshard_after_forward: bool = True, mesh: Any = None
) -> nn.Module:
    """Shard `module` in place with FSDP2 and return it: each unit of `shard_units` gets its own
    `fully_shard` (its parameters are gathered just for its forward and backward), then the root takes the
    rest (embeddings, final norm, head). Call it inside an initialised process group, with the model on its
    device, before building the optimizer. `mixed_precision`: None (fp32), a dtype (parameters cast to it
    for compute, gradients reduced in fp32) or a `MixedPrecisionPolicy`. `mesh`: a 1-D DeviceMesh (default:
    every process, on the model's device type)."""
    FSDPModule, _, fully_shard = _fsdp()
    policy = _policy(mixed_precision)
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError("FSDP needs a process group: launch with torchrun (--run.fsdp=true under torchrun)")
    if isinstance(module, FSDPModule):
        raise ValueError("this model is already sharded (shard() was called on it before)")
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        device = next(module.parameters()).device
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for unit in shard_units(module):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    from torch.distributed.fsdp import register_fsdp_forward_method

    for name in FORWARD_METHODS:
        if callable(getattr(module, name, None)):
            register_fsdp_forward_method(module, name)
    return module


@contextlib.contextmanager
def no_sync(module: nn.Module, active: bool = True) -> Iterator[None]:
    """Inside the block, the backward keeps this process's gradients instead of reducing them (gradient
    accumulation: every micro-batch but the last of an optimizer step). `active=False` is a no-op, so the
    runner writes `with no_sync(model, not last_micro):`. Works for FSDP2, DDP and single-process models."""
    if not active:
        yield
        return
    if is_sharded(module):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif isinstance(module, nn.parallel.DistributedDataParallel):
        with module.no_sync():
            yield
    else:
        yield


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full (unsharded) state dict as CPU tensors on rank 0, {} on the other ranks. A collective:
    call it on every process. An unsharded model gives its own state dict, on CPU."""
    if not is_sharded(module):
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_options(cpu_offload=True))


def load_full_state_dict(module: nn.Module, state_dict: dict[str, torch.Tensor], strict: bool = True) -> None:
    """Load a full state dict (rank 0's; the other ranks' argument is ignored) into a sharded model: each
    process keeps its shard. A collective. An unsharded model is loaded with `load_state_dict`."""
    if not is_sharded(module):
        module.load_state_dict(state_dict, strict=strict)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    # a copy: torch replaces the dict's entries with this process's shards
    set_model_state_dict(module, dict(state_dict), options=_options(broadcast_from_rank0=True, strict=strict))


def optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state (parameter-name keys, CPU tensors) on rank 0, {} on the other ranks. A
    collective. `load_optimizer_state_dict` loads it into a sharded or an unsharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not is_sharded(module):
        return get_optimizer_state_dict(module, optimizer, options=_options())
    return get_optimizer_state_dict(module, optimizer, options=_options(cpu_offload=True))


def load_optimizer_state_dict(module: nn.Module, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load `optimizer_state_dict`'s output (rank 0's, broadcast to the others when sharded). A collective.
    The optimizer gets copies of the dict's tensors, so the dict stays as it was."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if state_dict:  # a copy: the optimizer steps its tensors in place, and torch replaces entries with shards
        state_dict = {
            **state_dict,
            "state": {
                key: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
                for key, value in state_dict.get("state", {}).items()
            },
            "param_groups": [dict(group) for group in state_dict.get("param_groups", [])],
        }
    broadcast = is_sharded(module)
    set_optimizer_state_dict(module, optimizer, state_dict, options=_options(broadcast_from_rank0=broadcast))


def grad_norm(norm: torch.Tensor | None) -> float | None:
    """The float value of `clip_grad_norm_`'s result, which is a DTensor for a sharded model."""
    if norm is None:
        return None
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# ------------------------------------------------------------------------------------ channels-last
def _mode(setting: Any) -> str:
    mode = str(setting).strip().lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"--run.channels_last must be auto, true or false, got {setting!r}")
    return mode


def has_spatial_convs(module: nn.Module) -> bool:
    """Whether `module` has a 2-D convolution other than a patchify one (kernel = stride, no overlap)."""
    return any(isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != tuple(m.stride) for m in module.modules())


def use_channels_last(setting: Any, module: nn.Module, device: str | torch.device) -> bool:
    """`--run.channels_last`: true or false as given; auto: on CUDA, for models with `has_spatial_convs`."""
    mode = _mode(setting)
    if mode != "auto":
        return mode == "true"
    return torch.device(device).type == "cuda" and has_spatial_convs(module)


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """An input batch in channels-last order: images (N, C, H, W) as `torch.channels_last`, clips
    (N, C, T, H, W) as `torch.channels_last_3d`; anything else unchanged."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x
