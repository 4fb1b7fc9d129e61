"""The best mean IoU a model can reach on ShapeRef when its mask comes from a grid at a given stride.

    python -m bench.shaperef_ceiling                 # the seeds comparison's test split, strides 4, 8, 16

Each true mask is averaged over the cells of the grid, bilinearly upsampled back to the canvas and
thresholded at 0.5, as a model's logits are; the IoU of that mask with the true one bounds what any
model with that output grid can score. Printed as a markdown table by expression kind.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from refseg.data.shapes import generate_samples


def ceiling_iou(mask: np.ndarray | None, stride: int) -> float:
    """IoU of ``mask`` with itself seen through a grid of ``stride`` px cells (1 for no target)."""
    if mask is None:
        return 1.0
    truth = torch.from_numpy(mask.astype(np.float32))[None, None]
    height, width = mask.shape
    cells = F.adaptive_avg_pool2d(truth, (max(1, height // stride), max(1, width // stride)))
    seen = F.interpolate(cells, size=(height, width), mode="bilinear", align_corners=False) > 0.5
    truth = truth > 0.5
    return float((seen & truth).sum() / (seen | truth).sum().clamp(min=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=9600, help="ShapeRef samples in all splits (the test split is scored).")
    parser.add_argument("--per-scene", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--strides", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    test = [s for s in generate_samples(args.n, 0, size=args.size, per_scene=args.per_scene) if s.split == "test"]
    kinds = sorted({s.meta.kind for s in test})
    print("| output stride | mean IoU | " + " | ".join(kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    for stride in args.strides:
        ious = {s.id: ceiling_iou(s.mask, stride) for s in test}
        by_kind = [np.mean([ious[s.id] for s in test if s.meta.kind == kind]) for kind in kinds]
        print(f"| {stride} | {100 * np.mean(list(ious.values())):.1f} | " + " | ".join(f"{100 * v:.1f}" for v in by_kind) + " |")


if __name__ == "__main__":
    main()
