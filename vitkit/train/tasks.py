"""What the runner trains (vitkit/train/runner.py): a task turns a batch into a loss and knows its outputs.

    class Task:
        module: nn.Module                      # what the optimizer trains, DDP wraps and the EMA averages
        def step(self, net, batch, step):      # -> (loss with grad, mean over the batch; {name: detached scalar})
        def on_step_end(self, step, total):    # after each optimizer step (e.g. DINO's teacher)
        def evaluate(self, model):             # {"val_acc": ...} at each epoch end, or None
        def save_weights / load_weights        # the checkpoint's weights (and the EMA's)
        def finish(self, model, runner, history, summary)  # test metrics, the model directory, figures

The runner calls `step` under the run's autocast, with `net` the module as it trains (wrapped by DDP and
`torch.compile` when they are on) and `batch` the loader's (images, labels) on the device; it averages the
logs over the epoch into `metrics.jsonl` under `log_prefix + name`, with the loss as `loss`.

- `ClassificationTask`: cross-entropy on the labels (label smoothing), batch augmentation and mixup/cutmix
  soft targets (vitkit/data/augment.py).
- `DistillationTask`: DeiT soft or hard distillation against a frozen teacher, and students with a
  distillation token (two heads) (vitkit/methods/distill.py).
- `MultiExitTask`: models with several exits (`num_exits` > 1, DVT): the sum of every exit's loss;
  accuracy is the last exit's.
- `PretrainTask`: any self-supervised method of `vitkit.methods.create_method` (MAE, MPP, DINO, MSN).

`task_for(model)` picks the supervised task from the model's public attributes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..hub import load_pretrained, save_pretrained


@contextlib.contextmanager
def process_stream(d: Any, seed: int, step: int, device: torch.device):
    """Under torchrun, the random numbers drawn inside the block (dropout, stochastic depth, a method's masks and
    views) come from a stream of this process's own, seeded by (run seed, step, rank), and torch's global RNG is
    as it was after it. Every process holds the same RNG state (one seed, one checkpoint), so without it every
    process would draw the same masks for its slice of the batch; with it they differ, and a resumed run draws
    them again. One process (`d.world == 1`): the block draws from the global RNG as usual."""
    if d.world == 1:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        stream = ((seed * 1_000_003 + step) * 1_009 + d.rank) % 2**63
        torch.random.default_generator.manual_seed(stream)
        if devices:
            torch.cuda.manual_seed(stream)
        yield


class Task:
    """The base of every task; see the module docstring."""

    name: str = ""  # in messages: "the <name> loss became NaN"
    log_prefix: str = ""  # metrics.jsonl keys: "train_" + "loss"
    checkpoint_is_model: bool = True  # the checkpoint is a model directory (--model.pretrained can start from it)
    module: nn.Module

    def start_epoch(self, epoch: int, batches: Any) -> None:
        """Before the first step of `epoch` (`batches`: this process's batches, with `indices(epoch)`)."""

    def step(self, net: nn.Module, batch: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(net, batch, step)")

    def on_step_end(self, step: int, total_steps: int) -> None:
        """After optimizer step `step` (0-based) of `total_steps`."""

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        return None

    def save_weights(self, model: nn.Module, ema: nn.Module | None, directory: Path) -> None:
        save_pretrained(model, directory)
        if ema is not None:
            save_pretrained(ema, directory / "ema")

    def load_weights(self, model: nn.Module, ema: nn.Module | None, directory: Path) -> None:
        load_pretrained(model, directory)
        if ema is not None:
            load_pretrained(ema, directory / "ema")

    def finish(self, model: nn.Module, runner: Any, history: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
        return dict(summary)


# ------------------------------------------------------------------------------------ supervised
class ClassificationTask(Task):
    """Cross-entropy classification. `norm` normalises the [0, 1] batches inside the graph; `augment` is a
    `BatchAugment` (its targets are (B,) labels, or (B, K) soft targets when mixing); `criterion` a
    `DistillationLoss` (type 'none': cross-entropy with `label_smoothing` on hard targets), in a `Distillation`
    (vitkit/methods/distill.py) that also holds the teacher, if any."""

    log_prefix = "train_"

    def __init__(
        self,
        model: nn.Module,
        splits: Any,
        norm: nn.Module,
        augment: Any,
        distill: Any,
        cfg: Any,
        runner: Any,
        train_norm: nn.Module | None = None,
    ) -> None:
        self.module, self.splits, self.norm, self.augment, self.distill = model, splits, norm, augment, distill
        self.cfg, self.runner = cfg, runner
        # the training batches' normalisation: an identity when the loader's workers normalise already
        self.train_norm = norm if train_norm is None else train_norm
        self.smoothing = 0.0 if augment.mixing else cfg.optim.label_smoothing
        self.indices: list[Tensor] | None = None

    def start_epoch(self, epoch: int, batches: Any) -> None:
        # cached teacher logits are looked up by the batch's dataset indices
        self.indices = batches.indices(epoch) if self.distill.cached is not None else None
        self.steps_per_epoch = len(batches)

    def augment_batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """`augment` on this process's slice of the global batch. Every process holds the same RNG state (one
        seed, one checkpoint), so under torchrun each gathers the whole global batch, augments it with the
        draws one process would make, and keeps its slice: N processes erase, mix and pair images exactly as one
        process does, and no two processes draw alike. A collective: every process calls it at every step."""
        d = self.runner.d
        if d.world == 1:
            return self.augment(x, y)
        import torch.distributed as dist

        x = x.contiguous()  # NCCL gathers contiguous tensors only (a channels-last batch is not)
        xs, ys = [torch.empty_like(x) for _ in range(d.world)], [torch.empty_like(y) for _ in range(d.world)]
        dist.all_gather(xs, x)
        dist.all_gather(ys, y.contiguous())
        whole, target = self.augment(torch.cat(xs), torch.cat(ys))
        lo, n = d.rank * len(x), len(x)
        return whole[lo : lo + n], target[lo : lo + n]

    def teacher_logits(self, x: Tensor, step: int) -> Tensor | None:
        idx = self.indices[step % self.steps_per_epoch] if self.indices is not None else None
        with torch.autocast(x.device.type, enabled=False):  # the teacher computes in full precision
            return self.distill.teacher_logits(x, idx)

    def loss(self, out: Any, target: Tensor, teacher: Tensor | None) -> tuple[Tensor, Tensor]:
        """(the loss, the logits accuracy is measured on)."""
        return self.distill.criterion(out, target, teacher), out

    def step(self, net: nn.Module, batch: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch[0], batch[1]
        target = y
        if self.augment.active:
            x, target = self.augment_batch(x, y)  # target: (B,) labels, or (B, K) soft targets when mixing
        teacher = self.teacher_logits(x, step)
        with process_stream(self.runner.d, self.cfg.run.seed, step, x.device):  # dropout, stochastic depth
            out = net(self.train_norm(x))
        loss, logits = self.loss(out, target, teacher)
        acc = (logits.detach().argmax(-1) == y).float().mean() * 100.0
        return loss, {"acc": acc}

    def evaluate(self, model: nn.Module) -> dict[str, float] | None:
        if self.splits.val is None:
            return None
        val = self.runner_evaluate(model, self.splits.val)
        return {"val_loss": val["loss"], "val_acc": val["acc"]}

    def runner_evaluate(self, model: nn.Module, data: Any, norm: nn.Module | None = None) -> dict[str, Any]:
        from .engine import evaluate

        r = self.runner
        return evaluate(
            model,
            data,
            self.norm if norm is None else norm,
            r.device,
            dtype=r.precision,
            num_workers=self.cfg.data.num_workers,
        )

    def finish(self, model: nn.Module, runner: Any, history: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
        from .engine import plot_history

        cfg, splits = self.cfg, self.splits
        test = self.runner_evaluate(model, splits.test)
        vals = [h["val_acc"] for h in history if "val_acc" in h]
        metrics = {
            "model": cfg.model.name,
            "dataset": splits.name,
            "params": sum(p.numel() for p in model.parameters()),
            "epochs": cfg.sched.epochs,
            "test_acc": round(test["acc"], 3),
            "test_top5": round(test["top5"], 3),
            "test_loss": round(test["loss"], 5),
            "best_val_acc": round(max(vals), 3) if vals else None,
            **summary,
            "bf16": summary["precision"] == "bf16",
            "model_dir": str(runner.run_dir / "model"),
        }
        metrics.update(self.extra_metrics(model))
        if runner.main:
            save_pretrained(model, runner.run_dir / "model")
            figure = plot_history(runner.run_dir / "curves.png", history, f"{cfg.model.name} on {splits.name}")
            if figure:
                metrics["figure"] = str(figure)
        return metrics

    def extra_metrics(self, model: nn.Module) -> dict[str, Any]:
        return {}


class DistillationTask(ClassificationTask):
    """DeiT distillation (`--distill.type=soft|hard`, a teacher) and students with a distillation token, whose
    forward returns (class logits, distillation logits) in training: accuracy is the class head's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.two_heads = getattr(self.module, "dist_token", None) is not None

    def loss(self, out: Any, target: Tensor, teacher: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.distill.criterion(out, target, teacher), out[0] if self.two_heads else out

    def extra_metrics(self, model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.two_heads:  # each head alone and their mean
            saved = model.config.distilled_output
            try:
                heads = {}
                for mode in ("cls", "dist", "mean"):
                    model.config.distilled_output = mode
                    heads[mode] = round(self.runner_evaluate(model, self.splits.test)["acc"], 3)
                out["test_acc_heads"] = heads
            finally:
                model.config.distilled_output = saved
        if self.distill.teacher is not None:
            teacher = self.runner_evaluate(self.distill.teacher, self.splits.test, nn.Identity())
            c = self.cfg.distill
            out.update(distill_type=c.type, teacher=c.teacher, teacher_test_acc=round(teacher["acc"], 3))
        return out


class MultiExitTask(DistillationTask):
    """Models with several exits (`model.num_exits` > 1; DVT, Wang et al. 2021, sec. 3.3): in training the
    forward returns every exit's logits; the loss is the sum of all exits' losses (the last exit's takes the
    teacher term when distilling), and accuracy is the last exit's."""

    def loss(self, out: Any, target: Tensor, teacher: Tensor | None) -> tuple[Tensor, Tensor]:
        last = out[-1]
        loss = self.distill.criterion(last, target, teacher)
        loss = loss + sum(F.cross_entropy(e.float(), target, label_smoothing=self.smoothing) for e in out[:-1])
        return loss, last


def task_for(model: nn.Module, distill_type: str = "none") -> type[ClassificationTask]:
    """The supervised task of `model`: several exits (`num_exits` > 1) -> MultiExitTask; a distillation token
    or a teacher -> DistillationTask; else ClassificationTask."""
    if getattr(model, "num_exits", 1) > 1:
        return MultiExitTask
    if getattr(model, "dist_token", None) is not None or distill_type != "none":
        return DistillationTask
    return ClassificationTask


# ------------------------------------------------------------------------------------ self-supervised
class PretrainTask(Task):
    """A self-supervised method (vitkit/methods/base.py's contract): the loss and logs of `method(images)`;
    `on_step_end` advances the method's schedules. The checkpoint holds the whole method (a DINO teacher
    and centre too); the run ends with `RUN/backbone` from the final weights (the EMA's with
    `--run.ema_decay`), and MAE's whole model and reconstructions."""

    checkpoint_is_model = False
    WEIGHTS = "method.safetensors"
    EMA_WEIGHTS = "ema.safetensors"

    def __init__(self, method: nn.Module, splits: Any, norm: nn.Module, cfg: Any, runner: Any) -> None:
        self.module, self.splits, self.norm, self.cfg, self.runner = method, splits, norm, cfg, runner
        self.name = cfg.method.name

    def step(self, net: nn.Module, batch: list[Tensor], step: int) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.norm(batch[0])  # the labels are never used
        with process_stream(self.runner.d, self.cfg.run.seed, step, x.device):  # the method's masks and views
            out = net(x)
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}

    def on_step_end(self, step: int, total_steps: int) -> None:
        self.module.on_step_end(step, total_steps)

    def save_weights(self, model: nn.Module, ema: nn.Module | None, directory: Path) -> None:
        from safetensors.torch import save_file

        for m, name in ((model, self.WEIGHTS), (ema, self.EMA_WEIGHTS)):
            if m is not None:
                weights = {k: v.detach().cpu().contiguous().clone() for k, v in m.state_dict().items()}
                save_file(weights, str(directory / name), metadata={"format": "pt"})

    def load_weights(self, model: nn.Module, ema: nn.Module | None, directory: Path) -> None:
        from safetensors.torch import load_file

        from ..hub import load_state_dict_checked

        for m, name in ((model, self.WEIGHTS), (ema, self.EMA_WEIGHTS)):
            if m is None:
                continue
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"--resume: {directory} has no pre-training checkpoint ({name}); start the run again with --overwrite"
                )
            load_state_dict_checked(m, load_file(str(directory / name)), source=str(directory))

    def finish(self, model: nn.Module, runner: Any, history: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
        from .engine import PRETRAIN_PANELS, plot_history
        from .pretrain import save_backbone
        from .runner import eval_batches

        cfg, run_dir = self.cfg, runner.run_dir
        metrics = {
            "method": cfg.method.name,
            "model": cfg.model.name,
            "dataset": self.splits.name,
            "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in self.module.parameters() if p.requires_grad),
            "epochs": cfg.sched.epochs,
            "final_loss": history[-1]["loss"] if history else None,
            "final_feature_std": history[-1].get("feature_std") if history else None,
            **summary,
            "backbone_dir": str(run_dir / "backbone"),
        }
        if runner.main:
            model.eval()
            save_backbone(model, run_dir / "backbone")
            if hasattr(model, "save_pretrained"):  # MAE: the whole model (encoder + decoder) too
                model.save_pretrained(run_dir / "model")
            if hasattr(model, "save_figure"):  # e.g. MAE's reconstructions of test images
                x, _ = next(iter(eval_batches(self.splits.test, batch_size=8)))
                figure = model.save_figure(self.norm(x.to(runner.device_str)), run_dir / "reconstruction.png")
                metrics["reconstruction"] = str(figure)
            title = f"{cfg.method.name} pre-training of {cfg.model.name} on {self.splits.name}"
            figure = plot_history(run_dir / "curves.png", history, title, PRETRAIN_PANELS)
            if figure:
                metrics["figure"] = str(figure)
        return metrics


__all__ = [
    "ClassificationTask",
    "DistillationTask",
    "MultiExitTask",
    "PretrainTask",
    "Task",
    "process_stream",
    "task_for",
]
