"""Makes PyPI's torchvision importable beside a CPU-only torch build.

PyPI's torchvision wheel is built against CUDA torch; with the CPU torch wheel its C extension fails to load, so
`torchvision::nms`/`qnms` are never defined and `import torchvision` dies in its meta registrations. When (and only
when) the real extension cannot load, we define both schemas with a pure-torch CPU kernel (qnms: same greedy rule on
dequantised boxes). segment_anything needs nothing else from torchvision's C ops.
"""

import importlib.util
import os

import torch


def _nms_cpu(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS, same contract as torchvision.ops.nms: int64 indices of kept boxes, by decreasing score."""
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    x1, y1, x2, y2 = (dets.dequantize() if dets.is_quantized else dets).float().unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = scores.argsort(descending=True, stable=True)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for pos, i in enumerate(order.tolist()):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[pos + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=dets.device)


def _real_ops_load() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch
    folder = spec.submodule_search_locations[0]
    libs = [f for f in os.listdir(folder) if f.startswith("_C") and f.endswith((".so", ".pyd"))]
    if not libs:
        return False
    try:
        torch.ops.load_library(os.path.join(folder, libs[0]))
        return True
    except (OSError, RuntimeError):
        return False


_library = None  # keeps the registration alive for the life of the process


def apply() -> None:
    global _library
    if _library is not None or _real_ops_load():
        return
    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.impl(op, _nms_cpu, "CPU")
    import torchvision.extension

    torchvision.extension._has_ops = lambda: True  # torchvision.ops.nms asserts this before dispatching
