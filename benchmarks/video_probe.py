"""Probe one micro video model on moving digits: the benchmark's loop (AdamW, warm-up + cosine,
batch 64, label smoothing 0.1) with a log of the [CLS] collapse (docs/video.md, "Why the TimeSformers and
Model 2 stall from scratch").

    OMP_NUM_THREADS=1 python benchmarks/video_probe.py timesformer_micro_joint_patch4_28 --train 2000 --epochs 3 --log 10
    OMP_NUM_THREADS=1 python benchmarks/video_probe.py vivit_micro_fe_4x2_28 --train 2000 --epochs 3 --kw class_token=False,global_pool=avg

Every `--log` steps: mean training loss, batch accuracy, `cls-spread` (the std over the 64 clips of
the batch of what the head sees -- `forward_head(..., pre_logits=True)`: the [CLS] after the final
LN, or the mean of the tokens with global_pool='avg' -- averaged over channels: near 0 means the
model's output no longer depends on its input), the norm of the time embedding and a few gradient norms. At the end, test accuracy on
`--test` clips with the frames in order and shuffled. `--kw k=v,...` are create_model overrides
(`1x4x4` is a tuple, True/False booleans); `--te-std`, `--conv-std`, `--pos-std` re-initialise the
time embedding, the patch projection (trunc-normal, zero bias) or the position embedding with that
std; `--init FILE` initialises from an image-ViT state dict (create_model's `pretrained`).
Research tool: not tested, numbers only meaningful on the seeds and sizes given.
"""
import argparse, sys
import torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from video_moving_digits import shuffle_frames, accuracy
import vitkit
from vitkit.train.config import OptimConfig
from vitkit.train.engine import Normalise
from vitkit.train.optim import build_optimizer
from vitkit.train.schedule import cosine_schedule
from vitkit.data.moving_digits import load_moving_digits
p = argparse.ArgumentParser()
p.add_argument("model"); p.add_argument("--lr", type=float, default=3e-3); p.add_argument("--epochs", type=float, default=2)
p.add_argument("--train", type=int, default=6000); p.add_argument("--test", type=int, default=1000)
p.add_argument("--warmup", type=float, default=0.2, help="epochs"); p.add_argument("--te-std", type=float, default=None)
p.add_argument("--wd", type=float, default=0.05); p.add_argument("--ls", type=float, default=0.1)
p.add_argument("--seed", type=int, default=0); p.add_argument("--log", type=int, default=20)
p.add_argument("--kw", default="", help="k=v,k=v create_model kwargs (float/int/str)")
p.add_argument("--conv-std", type=float, default=None); p.add_argument("--pos-std", type=float, default=None)
p.add_argument("--init", default=None, help="image ViT state dict for the spatial part")
p.add_argument("--nohead0", action="store_true", help="head init trunc normal instead of zero")
a = p.parse_args()
torch.set_num_threads(1)
data = load_moving_digits(val_fraction=0.0, seed=0, num_train=a.train, num_test=a.test)
torch.manual_seed(a.seed)
kw = {}
for item in filter(None, a.kw.split(",")):
    k, v = item.split("=")
    if "x" in v and v.replace("x", "").isdigit():
        kw[k] = tuple(int(t) for t in v.split("x")); continue
    if v in ("True", "False"):
        kw[k] = v == "True"; continue
    for cast in (int, float):
        try: v = cast(v); break
        except ValueError: pass
    kw[k] = v
m = vitkit.create_model(a.model, num_classes=4, **({'pretrained': a.init} if a.init else {}), **kw)
if a.te_std is not None and getattr(m, "time_embed", None) is not None:
    torch.nn.init.trunc_normal_(m.time_embed, std=a.te_std)
if a.conv_std is not None:
    torch.nn.init.trunc_normal_(m.patch_embed.proj.weight, std=a.conv_std); torch.nn.init.zeros_(m.patch_embed.proj.bias)
if a.pos_std is not None:
    torch.nn.init.trunc_normal_(m.pos_embed, std=a.pos_std)
if a.nohead0:
    torch.nn.init.trunc_normal_(m.head.weight, std=0.02)
norm = Normalise(data.mean, data.std)
opt = build_optimizer(m, OptimConfig(lr=a.lr, weight_decay=a.wd))
x, y = data.train.images, data.train.labels
spe = len(x) // 64; total = int(a.epochs * spe)
lrs = cosine_schedule(a.lr, total, max(1, int(spe * a.warmup)))
g = torch.Generator().manual_seed(a.seed)
step = 0; run = []
print(vars(a), flush=True)
while step < total:
    order = torch.randperm(len(x), generator=g)
    for i in range(spe):
        if step >= total: break
        m.train()
        idx = order[i*64:(i+1)*64]
        for gr in opt.param_groups: gr["lr"] = lrs[step] * gr["lr_scale"]
        feats = m.forward_features(norm(x[idx].float()/255))
        out = m.forward_head(feats)
        loss = F.cross_entropy(out, y[idx], label_smoothing=a.ls)
        opt.zero_grad(set_to_none=True); loss.backward()
        gn = {n: p.grad.norm().item() for n, p in m.named_parameters() if n in ("time_embed", "patch_embed.proj.weight", "cls_token") and p.grad is not None}
        opt.step(); step += 1; run.append(loss.item())
        if step % a.log == 0 or step == 1:
            cls = m.forward_head(feats, pre_logits=True).detach()  # what the head sees ([CLS] or the mean)
            te = m.time_embed.norm().item() if getattr(m, "time_embed", None) is not None else float("nan")
            acc = (out.argmax(-1) == y[idx]).float().mean().item()
            print(f"step {step}/{total} lr {lrs[step-1]:.2e} loss {sum(run[-a.log:])/len(run[-a.log:]):.4f} batch-acc {acc:.2f} "
                  f"cls-spread {cls.std(0).mean():.3e} |te| {te:.3f} grads " + " ".join(f"{k.split('.')[0]}={v:.2e}" for k, v in gn.items()), flush=True)
xt, yt = data.test.images, data.test.labels
print(f"RESULT {a.model} {vars(a)}: acc {accuracy(m, xt, yt, norm):.1f} shuffled {accuracy(m, shuffle_frames(xt), yt, norm):.1f}", flush=True)
