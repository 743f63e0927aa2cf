"""Making the reference libraries (timm, transformers) importable next to a CPU-only torch.

timm and transformers import torchvision. The torchvision wheel on PyPI is a CUDA build whose C++
ops are missing under the CPU torch: `import torchvision` raises "operator torchvision::nms does
not exist". `make_torchvision_importable()` catches exactly that, defines the two op schemas
torchvision looks for, and imports it again; its transforms and models then work (its nms and
image decoding do not). Where torchvision imports on its own, it changes nothing. Used by the
test suite and the benchmarks; vitkit itself never imports torchvision.
"""

from __future__ import annotations

import sys

import torch

_LIBS: list = []


def make_torchvision_importable() -> bool:
    """Import torchvision, patching the CPU/CUDA mismatch if needed. False if it is not installed."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBS.append(lib)
        import torchvision  # noqa: F401
    return True
