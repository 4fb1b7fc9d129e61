"""Time and memory of DenseCRF (``refseg.postprocess.crf.refine``) on a large photo, with and
without the pixel cap (``refseg.limits.CRF_MAX_PIXELS``); quoted in docs/reliability.md.

    python -m bench.crf_cap --megapixels 36                 # capped (the default)
    python -m bench.crf_cap --megapixels 9 --max-pixels 0   # uncapped (0 = no cap)

One setting per process, so the peak resident memory is that of this refinement. The photo is
synthetic (a red left half on blue, with noise) and the probability map a blurred guess of it.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from refseg.limits import CRF_MAX_PIXELS
from refseg.postprocess.crf import refine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=36.0)
    parser.add_argument("--max-pixels", type=int, default=CRF_MAX_PIXELS, help="0: no cap")
    args = parser.parse_args()
    side = int((args.megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(0)
    rgb = np.empty((side, side, 3), np.uint8)
    rgb[:] = (30, 40, 200)
    rgb[:, : side // 2] = (220, 30, 30)
    rgb = np.clip(rgb.astype(np.int16) + rng.integers(-20, 21, rgb.shape, dtype=np.int16), 0, 255).astype(np.uint8)
    prob = np.full((side, side), 0.3, np.float32)
    prob[:, : side // 2 + side // 20] = 0.7
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    refined = refine(prob, rgb, max_pixels=args.max_pixels or side * side)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cap = f"cap {args.max_pixels:,} px" if args.max_pixels else "no cap"
    print(f"{side}x{side} ({side * side / 1e6:.1f} MP), {cap}: {seconds:.1f} s, "
          f"peak RSS {peak / 2**20:.2f} GB ({(peak - before) / 2**20:.2f} GB above the inputs), "
          f"mask {100 * (refined >= 0.5).mean():.1f}% of the photo")


if __name__ == "__main__":
    main()
