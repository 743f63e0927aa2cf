"""Test set-up shared by the whole suite.

- No network: Hugging Face is told to stay offline; reference models are built from configs.
- timm and transformers import torchvision. The torchvision wheel on PyPI is a CUDA build whose
  C++ ops are missing under the CPU torch, so `import torchvision` fails on registering its
  `nms` fake kernels. Defining the two op schemas first lets it import (transforms and models
  work; its nms and image decoding do not, and no test uses them). On a machine where
  torchvision imports on its own, this does nothing.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402


def _define_torchvision_schemas() -> None:
    try:
        torch.ops.torchvision.nms  # noqa: B018  (exists when torchvision's C++ ops are loaded)
        return
    except (AttributeError, RuntimeError):
        pass
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP.append(lib)
    except RuntimeError:  # already defined
        pass


_KEEP: list = []
_define_torchvision_schemas()
torch.set_num_threads(min(2, torch.get_num_threads()))
