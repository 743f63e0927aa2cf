"""Masked autoencoders (MAE): the model. Mask most patches, encode the visible ones, reconstruct the pixels.

Paper
    He, Chen, Xie, Li, Dollar, Girshick, "Masked Autoencoders Are Scalable Vision Learners",
    CVPR 2022 (arXiv:2111.06377).
Reference code
    facebookresearch/mae `models_mae.py` (`random_masking`, `forward_encoder`,
    `forward_decoder`, `forward_loss`, whose key names the decoder keeps: `decoder_embed`,
    `mask_token`, `decoder_pos_embed`, `decoder_blocks`, `decoder_norm`, `decoder_pred`), and
    Hugging Face `ViTMAEForPreTraining`, which `vitkit.from_pretrained` loads
    (vitkit/convert/hf_mae.py) and matches to 1e-4 given the same masking noise.
Deviations
    - The encoder is a vitkit `VisionTransformer` held as `encoder` (state-dict keys
      `encoder.*`), so any ViT of the registry can be pre-trained and its weights go straight to
      fine-tuning; official MAE checkpoints (encoder keys at the top level) are re-prefixed on load.
    - Any number of prefix tokens (0, 1 or 2) is handled; the paper's models have the class token.

Method (section 3): per sample, a random subset of `mask_ratio` (75%) of the N patches is
removed (argsort of uniform noise, so masking is exact: int(N (1 - r)) patches are kept); the
encoder sees only the visible patches with their position embeddings, which is what makes MAE
>= 3x cheaper than encoding all patches (table 1c); a light decoder (8 blocks of width 512 for
ViT-B) gets the encoded visible tokens plus a shared learnable mask token in every masked slot,
puts them back in image order (`ids_restore`), adds its own fixed 2-D sin-cos position
embeddings and predicts each patch's pixels. The loss is the mean squared error on the masked
patches only, optionally against per-patch normalised pixels (`norm_pix_loss`, table 1d).

Shapes: images (B, C, H, W) -> patches (B, N, p*p*C) -> visible tokens (B, P + K, D) with
K = int(N (1 - r)) -> decoder tokens (B, P + N, D_dec) -> predictions (B, N, p*p*C).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import Block, Linear, to_2tuple
from ..registry import MNIST_MEAN, MNIST_STD, register_model
from ._base import VitkitModel, register_family
from .vit import VisionTransformer, ViTConfig

logger = logging.getLogger("vitkit")


# ------------------------------------------------------------------------------------ pieces
def sincos_pos_embed_2d(embed_dim: int, grid_size: int | tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """Fixed 2-D sin-cos position embeddings (1, P + h*w, D), as MAE's `get_2d_sincos_pos_embed`.

    Half of the channels encode the column, half the row, each as [sin(pos w_k), cos(pos w_k)]
    with w_k = 1 / 10000^(k / (D/4)) (Vaswani et al. 2017, in 2-D). The column comes first, as in
    the official code (Hugging Face rotates its halves to match). Prefix tokens get zeros."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need embed_dim divisible by 4, got {embed_dim}")
    gh, gw = to_2tuple(grid_size)
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    parts = []
    for pos in (cols.flatten(), rows.flatten()):
        out = pos[:, None] * omega[None]  # (h*w, D/4)
        parts += [out.sin(), out.cos()]
    emb = torch.cat(parts, dim=1)  # (h*w, D)
    emb = torch.cat([torch.zeros(num_prefix_tokens, embed_dim, dtype=torch.float64), emb])
    return emb.float().unsqueeze(0)


def random_masking(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by argsort of noise (MAE `random_masking`).

    Returns `ids_keep` (B, K) the visible patches in shuffled order, K = int(N (1 - mask_ratio));
    `mask` (B, N) 1 for masked and 0 for visible patches, in image order; `ids_restore` (B, N)
    the permutation that puts [visible, masked] back in image order. `noise` (B, N) or a
    `generator` makes the masking deterministic."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    keep = int(num_patches * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(batch, num_patches, generator=generator, device=device if generator is None else None)
        noise = noise.to(device) if device is not None else noise
    elif noise.shape != (batch, num_patches):
        raise ValueError(
            f"noise must have shape (batch, num_patches) = {(batch, num_patches)}, got {tuple(noise.shape)}"
        )
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], mask, ids_restore


def patchify(images: Tensor, patch_size: int | tuple[int, int]) -> Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), each patch flattened as (row, column, channel) like MAE/HF."""
    B, C, H, W = images.shape
    ph, pw = to_2tuple(patch_size)
    if H % ph or W % pw:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {ph}x{pw}")
    x = images.reshape(B, C, H // ph, ph, W // pw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(B, (H // ph) * (W // pw), ph * pw * C)


def unpatchify(patches: Tensor, patch_size: int | tuple[int, int], grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of `patchify`: (B, N, p*p*C) -> (B, C, h*p, w*p)."""
    B = patches.shape[0]
    ph, pw = to_2tuple(patch_size)
    x = patches.reshape(B, grid[0], grid[1], ph, pw, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, grid[0] * ph, grid[1] * pw)


# ------------------------------------------------------------------------------------ the model
@dataclass
class MAEConfig:
    # encoder (a vitkit ViT; any other ViTConfig field goes in `encoder_kwargs`)
    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # official MAE 1e-6; Hugging Face ViTMAE 1e-12
    act: str = "gelu"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    # decoder (paper: 8 blocks of width 512 for all encoder sizes, table 1a/1b)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    # objective
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False  # target: per-patch normalised pixels (the paper's better setting)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, list):
            self.img_size = tuple(self.img_size)
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by decoder_num_heads "
                f"{self.decoder_num_heads}"
            )

    def encoder_config(self) -> ViTConfig:
        values = {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": 0,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qkv_bias": self.qkv_bias,
            "norm_eps": self.norm_eps,
            "act": self.act,
        }
        return ViTConfig(**{**values, **self.encoder_kwargs})


# The MAEConfig fields that configure the encoder ViT directly (its other ViTConfig fields go in `encoder_kwargs`).
ENCODER_FIELDS = (
    "img_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "qkv_bias",
    "norm_eps",
    "act",
)
_DECODER_PREFIXES = ("decoder_", "mask_token")


def check_backbone(backbone: nn.Module) -> None:
    """Raise ValueError unless `backbone` is a plain vitkit ViT that MAE can encode visible patches with."""
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(  # noqa: TRY004 -- a user error the CLI reports in one line
            f"MAE needs a plain ViT backbone (a vitkit VisionTransformer: patch tokens with global position "
            f"embeddings, so visible patches can be encoded alone); got {type(backbone).__name__}. Use a vit_* or "
            f"deit_* model"
        )
    if backbone.config.hybrid_layers or backbone.config.dynamic_img_size:
        raise ValueError(
            "MAE reconstructs pixel patches: the R50 hybrid stem and dynamic_img_size=True are not "
            "supported; use a plain vit_* model at a fixed img_size"
        )


@register_family
class MaskedAutoencoder(VitkitModel):
    """MAE pre-training model: a vitkit ViT encoder + the paper's lightweight decoder.

    `forward(images)` returns `{"loss": ...}`; `vitkit.methods.mae` wraps this model as the `mae`
    pre-training method (which adds the collapse monitor to that dict)."""

    family = "mae"
    config_class = MAEConfig

    def __init__(self, config: MAEConfig, encoder: VisionTransformer | None = None) -> None:
        super().__init__(config)
        c = config
        if encoder is None:
            encoder = VisionTransformer(c.encoder_config())
            fresh = True
        else:
            fresh = False
        check_backbone(encoder)
        self.encoder = encoder
        self.patch_size = to_2tuple(c.patch_size)
        self.grid_size = tuple(encoder.patch_embed.grid_size)
        self.num_prefix_tokens = encoder.num_prefix_tokens
        num_patches = self.grid_size[0] * self.grid_size[1]

        self.decoder_embed = Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(  # fixed sin-cos, not trained (section 3, "Decoder")
            torch.zeros(1, self.num_prefix_tokens + num_patches, c.decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(
                    c.decoder_embed_dim,
                    c.decoder_num_heads,
                    c.decoder_mlp_ratio,
                    qkv_bias=c.qkv_bias,
                    norm_eps=c.norm_eps,
                    act=c.act,
                )
                for _ in range(c.decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=c.norm_eps)
        self.decoder_pred = Linear(c.decoder_embed_dim, self.patch_size[0] * self.patch_size[1] * c.in_chans)
        self.init_weights(encoder=fresh)

    @classmethod
    def from_backbone(
        cls, backbone: VisionTransformer, init_backbone: bool = True, **options: Any
    ) -> MaskedAutoencoder:
        """Wrap an existing vitkit ViT (weights kept unless `init_backbone`); `options` are MAEConfig's
        decoder/objective fields (mask_ratio, norm_pix_loss, decoder_embed_dim, ...)."""
        check_backbone(backbone)
        vc = backbone.config
        enc = {f: getattr(vc, f) for f in ENCODER_FIELDS}
        base = dataclasses.asdict(ViTConfig(**{f: enc[f] for f in ENCODER_FIELDS}))
        extra = {
            k: v for k, v in dataclasses.asdict(vc).items() if k not in enc and k != "num_classes" and v != base[k]
        }
        known = {f.name for f in dataclasses.fields(MAEConfig)} - set(ENCODER_FIELDS) - {"encoder_kwargs"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown MAE option(s) {unknown}; MAE options: {sorted(known)}")
        model = cls(MAEConfig(**enc, encoder_kwargs=extra, **options), encoder=backbone)
        if init_backbone:
            model.init_weights(encoder=True)
        model.model_name = f"mae_{backbone.model_name}" if backbone.model_name else None
        model.pretrained_cfg = dict(backbone.pretrained_cfg)
        return model

    @property
    def backbone(self) -> VisionTransformer:
        return self.encoder

    # ----------------------------------------------------------------- initialisation
    def init_weights(self, encoder: bool = True) -> None:
        """MAE's `initialize_weights`: frozen sin-cos position embeddings, xavier-uniform linears
        and patch projection, normal(0.02) class and mask tokens, LayerNorm (1, 0)."""
        self.decoder_pos_embed.data.copy_(
            sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], self.grid_size, self.num_prefix_tokens)
        )
        nn.init.normal_(self.mask_token, std=0.02)
        modules = [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]
        if encoder:
            enc = self.encoder
            enc.pos_embed.data.copy_(sincos_pos_embed_2d(enc.embed_dim, self.grid_size, self.num_prefix_tokens))
            w = enc.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
            for token in (enc.cls_token, enc.dist_token):
                if token is not None:
                    nn.init.normal_(token, std=0.02)
            modules = [enc.blocks, enc.norm, enc.fc_norm, *modules]
        for root in modules:
            for m in root.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        self.encoder.pos_embed.requires_grad_(False)  # fixed sin-cos in the encoder too

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()} | {"mask_token", "decoder_pos_embed"}

    def adapt_checkpoint(self, state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
        """Official MAE checkpoints keep the encoder at the top level: prefix those keys `encoder.`."""
        if any(k.startswith("encoder.") for k in state):
            return dict(state)
        logger.info("%s: official MAE layout (encoder keys at the top level): prefixing them with 'encoder.'", source)
        return {k if k.startswith(_DECODER_PREFIXES) else f"encoder.{k}": v for k, v in state.items()}

    # ----------------------------------------------------------------- forward
    def forward_encoder(
        self,
        images: Tensor,
        mask_ratio: float | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the visible patches: -> latent (B, P + K, D), mask (B, N), ids_restore (B, N)."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        B = images.shape[0]
        ids_keep, mask, ids_restore = random_masking(
            B, self.grid_size[0] * self.grid_size[1], ratio, noise=noise, generator=generator, device=images.device
        )
        latent = self.encoder.forward_features(images, keep_indices=ids_keep)
        return latent, mask.to(latent.dtype), ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """(B, P + K, D) visible tokens -> (B, N, p*p*C) pixel predictions for every patch."""
        P = self.num_prefix_tokens
        x = self.decoder_embed(latent)  # (B, P + K, D_dec)
        B, _, Dd = x.shape
        N = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(B, N - (x.shape[1] - P), Dd)
        patches = torch.cat([x[:, P:], mask_tokens], dim=1)  # (B, N, D_dec): [visible, masked]
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, Dd))  # image order
        x = torch.cat([x[:, :P], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, P:]

    def target(self, images: Tensor) -> Tensor:
        """The reconstruction target (B, N, p*p*C): pixels, or per-patch normalised pixels."""
        target = patchify(images, self.patch_size)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error per patch, averaged over the masked patches only (section 3)."""
        loss = ((pred.float() - self.target(images).float()) ** 2).mean(dim=-1)  # (B, N)
        return (loss * mask).sum() / mask.sum()

    def forward_mae(
        self,
        images: Tensor,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        mask_ratio: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (loss, predictions (B, N, p*p*C), mask (B, N), latent (B, P + K, D))."""
        latent, mask, ids_restore = self.forward_encoder(images, mask_ratio, noise, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(images, pred, mask), pred, mask, latent

    def forward(
        self, images: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """(B, C, H, W) normalised images -> {"loss": MSE on the masked patches}."""
        return {"loss": self.forward_mae(images, noise, generator)[0]}

    def save_figure(self, images: Tensor, path: str | Path) -> Path:
        """The reconstruction figure of `images` (normalised as the model's pretrained_cfg says)."""
        return plot_reconstruction(self, images, path)


# ------------------------------------------------------------------------------------ figure
@torch.no_grad()
def plot_reconstruction(
    model: MaskedAutoencoder, images: Tensor, path: str | Path, mean=None, std=None, seed: int = 0, max_images: int = 8
) -> Path:
    """A PNG with one column per image and three rows: original, masked (visible patches only) and
    the reconstruction with the visible patches pasted in (the paper's figure 2).

    `images` (B, C, H, W) are normalised with `mean`/`std` (default: the model's pretrained_cfg)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("the reconstruction figure needs matplotlib: pip install matplotlib") from None
    from ..hub import atomic_write

    path = Path(path)
    images = images[:max_images]
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape[0], model.grid_size[0] * model.grid_size[1], generator=g).to(images.device)
    _, pred, mask, _ = model.forward_mae(images, noise=noise)
    model.train(was_training)
    patches = patchify(images, model.patch_size)
    if model.config.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
        mean_p, var_p = patches.mean(-1, keepdim=True), patches.var(-1, keepdim=True)
        pred = pred * (var_p + 1e-6) ** 0.5 + mean_p
    C = images.shape[1]
    m = mask.unsqueeze(-1)
    rows = {
        "original": images,
        f"masked ({model.config.mask_ratio:.0%})": unpatchify(patches * (1 - m), model.patch_size, model.grid_size, C),
        "reconstruction + visible": unpatchify(patches * (1 - m) + pred * m, model.patch_size, model.grid_size, C),
    }
    mean = torch.tensor(mean if mean is not None else model.pretrained_cfg.get("mean", (0.0,) * C)).view(1, -1, 1, 1)
    std = torch.tensor(std if std is not None else model.pretrained_cfg.get("std", (1.0,) * C)).view(1, -1, 1, 1)
    n = images.shape[0]
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.0), squeeze=False, layout="constrained")
    for r, (title, batch) in enumerate(rows.items()):
        pixels = (batch.float().cpu() * std + mean).clamp(0, 1)
        for i in range(n):
            ax = axes[r][i]
            img = pixels[i].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if C == 1 else img, cmap="gray" if C == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ names
def _register_all() -> None:
    """The paper's models (official `mae_vit_*` names) and a CPU-size one for 28x28 grey images."""
    sizes = {
        "mae_vit_base_patch16": {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16},
        "mae_vit_large_patch16": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": 16},
        "mae_vit_huge_patch14": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "patch_size": 14},
    }
    for name, cfg in sizes.items():
        register_model(name, "mae", dict(cfg, img_size=224), crop_pct=1.0)  # ImageNet mean/std, as MAE
    register_model(  # vit_micro_patch4_28 + a 2-block decoder of width 64
        "mae_vit_micro_patch4_28",
        "mae",
        {
            "img_size": 28,
            "patch_size": 4,
            "in_chans": 1,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 4,
            "mlp_ratio": 2.0,
            "decoder_embed_dim": 64,
            "decoder_depth": 2,
            "decoder_num_heads": 4,
            "decoder_mlp_ratio": 2.0,
        },
        mean=MNIST_MEAN,
        std=MNIST_STD,
        crop_pct=1.0,
    )


_register_all()
