"""A Hugging Face Hub cache built offline, for tests that load Hub models (tests/test_hub_remote.py,
tests/train/test_train_hub.py): `offline_hub_cache` (an empty cache, offline, that huggingface_hub reads),
`put_in_cache` (a folder stored as a repo's commit, laid out as huggingface_hub lays out a download),
`randomise` (random weights everywhere, heads included) and `timm_saved` (timm's `save_for_hf` of a
randomly initialised timm model)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torch import nn


def offline_hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hub cache, offline; huggingface_hub reads both settings from its constants module.
    A test module's `hub_cache` fixture returns it."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path, revision: str = "main", commit: str | None = None) -> str:
    """Store the files of `folder` as commit `commit` of `repo_id`, with refs/`revision` pointing at it,
    the way huggingface_hub lays out a download: content-addressed blobs, relative symlinks."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    commit = commit or hashlib.sha1(b"".join(p.read_bytes() for p in files)).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, heads included (zero-initialised heads would hide differences)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise)
    return model.eval()


def timm_saved(tmp_path, name: str, seed: int = 0, safe_serialization="both", **kw):
    """timm's model `name` (with `kw`), randomised, saved by timm's `save_for_hf` into a folder: (model, folder)."""
    torch.manual_seed(seed)
    ref = randomise(_timm().create_model(name, pretrained=False, **kw), seed)
    folder = tmp_path / f"timm-{seed}-{safe_serialization}"
    _timm().models.save_for_hf(ref, str(folder), safe_serialization=safe_serialization)
    return ref, folder


def _timm():
    return pytest.importorskip("timm")
