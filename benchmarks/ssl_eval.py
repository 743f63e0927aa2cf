"""Self-supervised pre-training, evaluated: pre-train a micro ViT without labels on MNIST or
Fashion-MNIST, then measure what the representation is worth.

    python benchmarks/ssl_eval.py --method mae --data fashion_mnist --epochs 10 --threads 1   # accuracy
    python benchmarks/ssl_eval.py --timing --threads 2                                        # MAE speed-up
    python benchmarks/ssl_eval.py --smoke                                                     # everything on the digits, ~1 min

What it does (each step is the library's own code: `vitkit pretrain`, `vitkit.eval`, `vitkit train`):
1. Pre-train `--model` (vit_micro_patch4_28) with `--method` (mae | mpp | dino | msn) on the train
   images (labels unused) for `--epochs`; kept in OUT/pretrain-METHOD and reused if present.
2. Frozen features of the pre-trained backbone ([CLS] after the final norm) on the train and test
   splits, and the same for the randomly initialised backbone (the floor), then:
     k-NN          DINO's weighted k-NN (k = 20, T = 0.07)                vitkit.eval.knn_classifier
     linear probe  logistic regression, weight decay chosen on held-out   vitkit.eval.linear_probe
     few-shot      1 / 5 / 10 per class, ridge regression to +-1 targets  vitkit.eval.few_shot_lsr
                   (the ViT paper's protocol), mean over 3 seeds
3. Fine-tune on 1% and 10% of the labelled train set (stratified, `--data.train_fraction`) with the
   same budget (`--ft-epochs`, batch, lr, schedule) from the pre-trained backbone (`--finetune`:
   layer-wise LR decay 0.75) and from scratch; test accuracy of both.
4. `--timing`: the MAE pre-training step (forward + backward + AdamW) at mask ratio 0.75, the
   encoder seeing 25% of the patches, against the same model whose encoder sees all patches (the
   paper's table 1c "encoder w/ [M]" compute; the decoder and loss are identical), on ViT-B/16
   224x224 (batch `--timing-batch`) and on the micro model. Interleaved rounds, median. The paper
   reports >= 3x (table 1c: 3.3x wall-clock for ViT-L).

Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


PRETRAIN_DEFAULTS = {"epochs": 10, "batch_size": 256, "lr": 1.5e-3}  # without --recipe


def pretrain_backbone(args, out: Path) -> Path:
    from vitkit.train.pretrain import load_pretrain_recipe, pretrain, pretrain_config

    run_dir = out / f"pretrain-{args.method}"
    if (run_dir / "backbone" / "model.safetensors").is_file():
        print(f"reusing {run_dir}/backbone")
        if (run_dir / "config.yaml").is_file():  # the settings the run was made with
            args.epochs = load_pretrain_recipe(run_dir / "config.yaml").sched.epochs
        return run_dir / "backbone"
    overrides = [f"--run.out={run_dir}", f"--data.name={args.data}", "--data.val_fraction=0",
                 f"--data.train_fraction={args.fraction}", f"--model.name={args.model}",
                 f"--run.threads={args.threads}", f"--run.precision={dict(auto='auto', true='bf16', false='fp32')[args.bf16]}", "--data.num_workers=0"]
    # the recipe's epochs, batch and lr stand unless given here; without a recipe, PRETRAIN_DEFAULTS
    for key, flag in (("epochs", "sched.epochs"), ("batch_size", "run.batch_size"), ("lr", "optim.lr")):
        if getattr(args, key) is not None:
            overrides.append(f"--{flag}={getattr(args, key)}")
    if not args.recipe:
        overrides.append(f"--sched.warmup_epochs={min(1.0, args.epochs / 4)}")
    overrides += args.pretrain_overrides
    if args.method == "mae":
        overrides.append("--method.options.norm_pix_loss=true")
    cfg = pretrain_config(args.method, recipe=args.recipe, overrides=overrides)
    args.epochs = cfg.sched.epochs
    m = pretrain(cfg)
    print(f"pre-trained {args.method}: final loss {m['final_loss']:.4f}, feature std {m['final_feature_std']}, "
          f"{m['train_seconds']:.0f} s")
    return run_dir / "backbone"


def frozen_evals(backbone, splits, args) -> dict:
    from vitkit.eval import extract_features, few_shot_lsr, knn_classifier, linear_probe

    kw = {"normalize": (splits.mean, splits.std)}
    # Split.batch gives float32 in [0, 1] whatever the storage (MNIST's splits hold uint8 0..255), the range
    # the data's mean/std and the pre-training saw
    train_x, train_y = splits.train.batch(slice(0, args.probe_train or len(splits.train)))
    test_x, test_y = splits.test.batch(slice(None))
    ftr = extract_features(backbone, train_x, **kw)
    fte = extract_features(backbone, test_x, **kw)
    knn = knn_classifier(ftr, train_y, fte, test_y, ks=(20,))
    probe = linear_probe(ftr, train_y, fte, test_y, max_iter=args.probe_iter)
    shots = few_shot_lsr(ftr, train_y, fte, test_y, shots=(1, 5, 10))
    return {"knn20": round(knn[20]["top1"], 2), "linear_probe": round(probe.top1, 2),
            **{f"few_shot_{n}": round(v["mean"], 2) for n, v in shots.items()}}


def finetune(args, out: Path, backbone_dir: Path | None, fraction: float) -> float:
    from vitkit.train import TrainConfig, apply_overrides, train
    from vitkit.train.pretrain import finetune_settings

    tag = "pretrained" if backbone_dir else "scratch"
    cfg = apply_overrides(TrainConfig(), [
        f"--run.out={out / f'ft-{tag}-{fraction}'}", f"--data.name={args.data}", "--data.val_fraction=0",
        f"--data.train_fraction={fraction}", f"--model.name={args.model}", f"--sched.epochs={args.ft_epochs}",
        "--sched.warmup_epochs=1", f"--run.threads={args.threads}", f"--run.batch_size={args.ft_batch_size}",
        f"--run.precision={dict(auto='auto', true='bf16', false='fp32')[args.bf16]}",
        f"--optim.lr={args.ft_lr}", "--run.progress=false", "--data.num_workers=0", "--optim.layer_decay=0.75",
    ])
    if (Path(cfg.run.out) / "metrics.json").is_file():
        return json.loads((Path(cfg.run.out) / "metrics.json").read_text())["test_acc"]
    if backbone_dir is not None:
        finetune_settings(cfg, backbone_dir)
    return train(cfg)["test_acc"]


def mae_step_times(args) -> dict:
    """Seconds per MAE training step with the encoder on the visible 25% vs on all patches."""
    from _common import interleaved

    import vitkit
    from vitkit.methods import create_method

    results = {}
    configs = [("vit_micro_patch4_28", 256, (1, 28, 28))]
    if not args.smoke:
        configs.insert(0, ("vit_base_patch16_224", args.timing_batch, (3, 224, 224)))
    for name, batch, shape in configs:
        torch.manual_seed(0)
        method = create_method("mae", vitkit.create_model(name, num_classes=0, img_size=shape[-1], in_chans=shape[0]))
        opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
        x = torch.randn(batch, *shape)
        n = method.grid_size[0] * method.grid_size[1]

        def step(all_tokens: bool, method=method, opt=opt, x=x, n=n, batch=batch) -> None:
            if all_tokens:  # the encoder processes every patch; the loss still covers the same 75%
                _, mask, _ = vitkit.methods.mae.random_masking(batch, n, 0.75)
                ids = torch.arange(n).expand(batch, n)
                latent = method.encoder.forward_features(x, keep_indices=ids)
                loss = method.forward_loss(x, method.forward_decoder(latent, ids), mask)
            else:
                loss = method(x)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        ns = argparse.Namespace(device="cpu", min_time=0.0 if args.smoke else 2.0)
        t = interleaved({"visible": lambda: step(False), "all": lambda: step(True)}, ns,
                        warmup=1, rounds=2 if args.smoke else 5)
        results[name] = {"batch": batch, "s_visible": round(t["visible"], 4), "s_all": round(t["all"], 4),
                         "speedup": round(t["all"] / t["visible"], 2)}
        print(f"MAE step, {name} batch {batch}: encoder on 25% {t['visible']:.3f} s, on all patches "
              f"{t['all']:.3f} s -> {t['all'] / t['visible']:.2f}x")
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="mae")
    p.add_argument("--data", default="fashion_mnist", choices=["mnist", "fashion_mnist", "digits"])
    p.add_argument("--model", default="vit_micro_patch4_28")
    p.add_argument("--recipe", default=None, help="a `vitkit pretrain` recipe for the pre-training (e.g. "
                   "recipes/pretrain_dino_mnist.yaml); --epochs/--batch-size/--lr and the overrides go on top")
    p.add_argument("--epochs", type=int, default=None, help="pre-training epochs (default: the recipe's, else 10)")
    p.add_argument("--fraction", type=float, default=1.0, help="share of the train images used for pre-training")
    p.add_argument("--batch-size", type=int, default=None, help="pre-training batch (default: the recipe's, else 256)")
    p.add_argument("--lr", type=float, default=None, help="pre-training lr (default: the recipe's, else 1.5e-3)")
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"],
                   help="bf16 autocast for pre-training and fine-tuning (auto: where bf16 is native, e.g. AMX)")
    p.add_argument("--ft-epochs", type=int, default=30, help="fine-tuning epochs (same for both starts)")
    p.add_argument("--ft-batch-size", type=int, default=64)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--ft-fractions", type=float, nargs="*", default=[0.01, 0.1])
    p.add_argument("--probe-train", type=int, default=10000, help="train images for the frozen evaluations (0: all)")
    p.add_argument("--probe-iter", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing", action="store_true", help="only the MAE step-time ratio")
    p.add_argument("--timing-batch", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the pipeline, numbers meaningless")
    p.add_argument("--out", default="runs/ssl_eval")
    p.add_argument("pretrain_overrides", nargs="*", help="extra --section.field=value for vitkit pretrain")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.recipe:
        for key, value in PRETRAIN_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.smoke:
        args.data, args.model, args.epochs, args.fraction, args.ft_epochs = "digits", "vit_micro_patch2_8", 1, 1.0, 1
        args.ft_fractions, args.probe_train, args.probe_iter = [0.1], 0, 50
    out = Path(args.out) / (f"{args.method}-{args.data}" + ("-smoke" if args.smoke else ""))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict = {"args": dict(vars(args)), "threads": args.threads}
    if args.timing or args.smoke:
        results["mae_step_time"] = mae_step_times(args)
        if args.timing:
            (out / "timing.json").write_text(json.dumps(results, indent=2) + "\n")
            return results

    import vitkit
    from vitkit.data import load_dataset

    splits = load_dataset(args.data, val_fraction=0.0)
    backbone_dir = pretrain_backbone(args, out)
    pre = vitkit.from_pretrained(backbone_dir)
    torch.manual_seed(0)
    scratch = vitkit.create_model(args.model, num_classes=0, in_chans=splits.in_chans, img_size=splits.img_size)
    results["frozen"] = {"pretrained": frozen_evals(pre, splits, args), "random_init": frozen_evals(scratch, splits, args)}
    results["finetune"] = {
        str(f): {"pretrained": finetune(args, out, backbone_dir, f), "scratch": finetune(args, out, None, f)}
        for f in args.ft_fractions
    }
    results["args"] = dict(vars(args))  # after pre-training: the epochs a recipe gave are filled in
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    fr = results["frozen"]
    print(f"\n{args.method} on {args.data}, {args.model}, {args.epochs} pre-training epochs ({args.threads} thread(s))\n")
    print("| backbone | k-NN (k=20) | linear probe | 1-shot | 5-shot | 10-shot |")
    print("|---|---|---|---|---|---|")
    for name, r in fr.items():
        print(f"| {name} | {r['knn20']} | {r['linear_probe']} | {r['few_shot_1']} | {r['few_shot_5']} | "
              f"{r['few_shot_10']} |")
    print("\n| labels | fine-tuned from pre-training | from scratch |\n|---|---|---|")
    for f, r in results["finetune"].items():
        print(f"| {float(f):.0%} | {r['pretrained']} | {r['scratch']} |")
    print(f"\nresults: {out / 'results.json'} ({results['seconds']:.0f} s)")
    if "mae_step_time" in results:
        print(json.dumps(results["mae_step_time"]))
    return results


if __name__ == "__main__":
    main()
