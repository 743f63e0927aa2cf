"""Test set-up shared by the whole suite: offline Hugging Face, importable timm/transformers on a
CPU-only torch (see vitkit/compat.py), and at most 2 threads so timings of a run are comparable."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from vitkit.compat import make_torchvision_importable  # noqa: E402

make_torchvision_importable()
torch.set_num_threads(min(2, torch.get_num_threads()))
