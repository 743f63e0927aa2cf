"""Test set-up shared by the whole suite: offline Hugging Face, importable timm/transformers on a
CPU-only torch (see vitkit/compat.py), and one torch thread per test process: the tests use tiny
models, for which a second thread costs more in synchronisation than it gains (and 2-thread
OpenMP slows down tens of times when the other core is busy)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from vitkit.compat import make_torchvision_importable  # noqa: E402

make_torchvision_importable()
torch.set_num_threads(1)
