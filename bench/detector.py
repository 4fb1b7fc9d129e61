"""The COCO detector (refseg.models.detector): box AP on our val photos, and latency against OpenCV.

    python -m bench.detector accuracy --sizes 300 384 512     # COCOeval AP, AP@0.5, recall per class
    python -m bench.detector latency --sizes 300 384 512 --threads 1 2 --runs 20

``accuracy`` runs the detector (score >= 0.01, at most 100 boxes) on every val photo of
``../shared/data`` COCO instances, instances-extra and panoptic (things), scores the boxes with
pycocotools ``COCOeval`` (AP over IoU 0.5:0.95 and AP at IoU 0.5), and, at ``--threshold``,
the recall at IoU 0.5 of each frequent class (a ground-truth box counts as found when a
detection of its class overlaps it by IoU >= 0.5), the class-agnostic recall, the recall of
COCO's large objects (the size of most referred objects) and the number of detections per photo. ``latency`` first times the graph parse and ``load_detector``, then times, in interleaved rounds on one decoded photo, our
pre-processing, network and end-to-end ``detect`` against OpenCV's forward of the same graph
(``cv2.dnn.readNetFromTensorflow``, which includes its NMS) from a prepared input, and the
batched throughput of both. Both print markdown tables.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench import SHARED_DATA
from bench.latency import interleaved_timings

#: (name, annotation file, photo folder) of each val set, relative to the data folder
VAL_SETS = (
    ("coco-instances", "coco-instances/annotations/instances_val2017.json", "coco-instances/images/val2017"),
    ("coco-instances-extra", "coco-instances-extra/annotations/instances_val2017.json", "coco-instances-extra/images/val2017"),
    ("coco-panoptic things", "coco-panoptic/annotations/panoptic_val2017.json", "coco-panoptic/images/val2017"),
)
EVAL_THRESHOLD = 0.01
MIN_INSTANCES = 25  # a class is "frequent" with at least this many ground-truth boxes over the three sets
LARGE_AREA = 96**2  # COCO's "large" objects


# ------------------------------------------------------------------------------------ accuracy
def ground_truth(annotation_file: Path) -> dict:
    """COCO instances-style ground truth (images, thing categories, boxes); panoptic things converted."""
    data = json.loads(annotation_file.read_text())
    if "segments_info" not in (data["annotations"] or [{}])[0]:
        return data
    things = [c for c in data["categories"] if c.get("isthing")]
    thing_ids = {c["id"] for c in things}
    boxes = [
        {**{k: s[k] for k in ("id", "category_id", "iscrowd", "bbox", "area")}, "image_id": a["image_id"]}
        for a in data["annotations"] for s in a["segments_info"] if s["category_id"] in thing_ids
    ]
    return {"images": data["images"], "categories": things, "annotations": boxes}


def coco_results(image_id: int, detections) -> list[dict]:
    """Detections in COCO result format (bbox as x, y, width, height)."""
    return [
        {"image_id": image_id, "category_id": int(label), "score": float(score),
         "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]}
        for label, score, box in zip(detections.labels, detections.scores, detections.boxes)
    ]


def coco_ap(gt: dict, results: list[dict]) -> tuple[float, float]:
    """(AP, AP@0.5) of box results with pycocotools COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [{**a, "id": i + 1} for i, a in enumerate(gt["annotations"])]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), float(evaluator.stats[1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes [N, 4] and [M, 4] given as x, y, width, height."""
    a, b = a[:, None, :], b[None, :, :]
    w = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / np.maximum(union, 1e-9)


def recall_hits(gt: dict, results: list[dict], threshold: float) -> list[tuple[int, bool, bool, bool]]:
    """Per non-crowd ground-truth box: (class id, found by its class, found by any class, COCO "large")
    at IoU >= 0.5; large means an area above 96² pixels."""
    kept = [r for r in results if r["score"] >= threshold]
    hits = []
    for image_id in {im["id"] for im in gt["images"]}:
        truths = [a for a in gt["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
        found = [r for r in kept if r["image_id"] == image_id]
        if not truths:
            continue
        t_boxes = np.array([a["bbox"] for a in truths], np.float64)
        d_boxes = np.array([r["bbox"] for r in found], np.float64).reshape(-1, 4)
        iou = box_iou(t_boxes, d_boxes) >= 0.5
        same = np.array([[a["category_id"] == r["category_id"] for r in found] for a in truths], bool).reshape(iou.shape)
        hits += [
            (a["category_id"], bool((iou[i] & same[i]).any()), bool(iou[i].any()), a["area"] > LARGE_AREA)
            for i, a in enumerate(truths)
        ]
    return hits


def accuracy(sizes: list[int], threshold: float, anchors: str) -> None:
    from refseg.data.images import load_image
    from refseg.models.boxes import COCO_DETECTION_NAMES
    from refseg.models.detector import load_detector

    torch.set_num_threads(1)
    detector = load_detector(anchors=anchors)
    sets = [(name, ground_truth(SHARED_DATA / ann), SHARED_DATA / photos) for name, ann, photos in VAL_SETS]
    counted = ", ".join(f"{name} {len(gt['images'])}" for name, gt, _ in sets)
    print(f"Photos: {counted}; boxes scored at >= {EVAL_THRESHOLD}, recall at >= {threshold}; anchors: {anchors}.\n")
    print("| size | set | AP | AP@0.5 | recall@0.5 (class) | recall@0.5 (any class) | recall@0.5 (class), large | "
          "detections / photo |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    per_class: dict[int, Counter] = {}
    for size in sizes:
        hits_all = []
        for name, gt, folder in sets:
            results = []
            for image in gt["images"]:
                found = detector.detect(load_image(folder / image["file_name"]), size=size, score_threshold=EVAL_THRESHOLD)
                results += coco_results(image["id"], found)
            ap, ap50 = coco_ap(gt, results)
            hits = recall_hits(gt, results, threshold)
            hits_all += hits
            per_photo = sum(r["score"] >= threshold for r in results) / len(gt["images"])
            large = [h[1] for h in hits if h[3]]
            print(f"| {size} | {name} | {100 * ap:.1f} | {100 * ap50:.1f} | {100 * np.mean([h[1] for h in hits]):.1f} | "
                  f"{100 * np.mean([h[2] for h in hits]):.1f} | {100 * np.mean(large):.1f} ({len(large)}) | {per_photo:.1f} |")
        counts = Counter(h[0] for h in hits_all)
        per_class[size] = Counter({c: sum(h[1] for h in hits_all if h[0] == c) for c in counts})
    print(f"\nRecall at IoU 0.5 and score >= {threshold}, per class with >= {MIN_INSTANCES} boxes over the three sets:\n")
    print("| class | boxes | " + " | ".join(f"{s} px" for s in sizes) + " |")
    print("|---|---:|" + "---:|" * len(sizes))
    for c, n in counts.most_common():
        if n >= MIN_INSTANCES:
            cells = " | ".join(f"{100 * per_class[s][c] / n:.0f}%" for s in sizes)
            print(f"| {COCO_DETECTION_NAMES[c]} | {n} | {cells} |")


# ------------------------------------------------------------------------------------ latency
def opencv_net():
    import cv2

    from refseg.models.detector import graph_path

    pb = graph_path()
    return cv2, cv2.dnn.readNetFromTensorflow(str(pb), str(pb.parent / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"))


def latency(sizes: list[int], threads: list[int], runs: int, warmup: int, batch: int) -> None:
    from refseg.models.detector import graph_path, load_detector, resize_like_tf
    from refseg.models.tf_graph import read_constants
    from refseg.samples import get_sample

    cv2, net = opencv_net()
    start = time.perf_counter()
    read_constants(graph_path())
    parsed = time.perf_counter()
    detector = load_detector()
    loaded = time.perf_counter()
    print(f"Graph parse {parsed - start:.2f} s; load_detector (parse + build + load) {loaded - parsed:.2f} s.")
    rgb = get_sample("astronaut").load()
    print(f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__}, OpenCV {cv2.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} before the run. Photo: astronaut {rgb.shape[1]}x{rgb.shape[0]} (decoded). "
          f"{runs} interleaved rounds after {warmup} warm-up rounds.\n")
    print("| threads | size | refseg pre-processing | refseg network | refseg detect (end to end) | OpenCV forward (incl. NMS) | "
          f"refseg batch of {batch}, photos/s | OpenCV batch of {batch}, photos/s |")
    print("|---:|---:|---|---|---|---|---:|---:|")
    for n in threads:
        torch.set_num_threads(n)
        cv2.setNumThreads(n)
        for size in sizes:
            x = detector.preprocess(rgb, size)
            blob = resize_like_tf(rgb, size).numpy()
            xs, blobs = x.expand(batch, -1, -1, -1).contiguous(), np.repeat(blob, batch, axis=0)
            fns: dict[str, Callable[[], object]] = {
                "pre": lambda: detector.preprocess(rgb, size),
                "net": lambda: detector.head(x),
                "detect": lambda: detector.detect(rgb, size),
                "cv": lambda: (net.setInput(blob), net.forward()),
            }
            with torch.no_grad():
                single = interleaved_timings(fns, runs, warmup)
                batched = interleaved_timings(
                    {"ours": lambda: detector.head(xs), "cv": lambda: (net.setInput(blobs), net.forward())},
                    max(3, runs // 4), 1,
                )

            def cell(key: str) -> str:
                wall = single[key][0] * 1000
                return f"{np.median(wall):.1f} / {np.percentile(wall, 90):.1f} ms"

            rates = {k: batch / np.median(v[0]) for k, v in batched.items()}
            print(f"| {n} | {size} | {cell('pre')} | {cell('net')} | {cell('detect')} | {cell('cv')} | "
                  f"{rates['ours']:.1f} | {rates['cv']:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.detector", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy", help="COCOeval AP and recall per class on the val photos")
    acc.add_argument("--sizes", type=int, nargs="+", default=[300])
    acc.add_argument("--threshold", type=float, default=0.2, help="score threshold of the recall columns")
    acc.add_argument("--anchors", choices=["pixels", "relative"], default="pixels", help="anchor sizes at sizes other than 300")
    lat = sub.add_parser("latency", help="median / p90 latency and batched throughput, refseg vs OpenCV")
    lat.add_argument("--sizes", type=int, nargs="+", default=[300])
    lat.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    lat.add_argument("--runs", type=int, default=20)
    lat.add_argument("--warmup", type=int, default=3)
    lat.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command == "accuracy":
        accuracy(args.sizes, args.threshold, args.anchors)
    else:
        latency(args.sizes, args.threads, args.runs, args.warmup, args.batch)


if __name__ == "__main__":
    main()
