"""`refseg data`: convert datasets to JSONL manifests, generate ShapeRef, summarise a manifest."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

import typer

_OUT = typer.Option(..., "--out", "-o", help="Output folder (refs.jsonl and masks/ are written there).")
_MASK_FORMAT = typer.Option("png", "--mask-format", help="png (0/255 files) or rle (inline COCO RLE).")
_SYNTHESIZE = typer.Option(
    0, "--synthesize", min=0, help="Synthesized expressions per photo (0: one sample per category name)."
)
_SEED = typer.Option(0, "--seed", help="Random seed of the expression synthesis.")
_LIMIT = typer.Option(0, "--limit", min=0, help="Convert only the first N photos (0: all).")


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group (with ``data convert``) to the `refseg` app."""
    data_app = typer.Typer(help="Dataset conversion (to JSONL manifests), ShapeRef, statistics.", no_args_is_help=True)
    convert_app = typer.Typer(help="Convert a dataset to OUT/refs.jsonl + mask PNGs.", no_args_is_help=True)
    for name, command in (
        ("refer", convert_refer), ("coco-instances", convert_coco_instances),
        ("coco-panoptic", convert_coco_panoptic), ("camvid", convert_camvid),
    ):
        convert_app.command(name)(command)
    data_app.add_typer(convert_app, name="convert")
    data_app.command("shapes")(shapes)
    data_app.command("stats")(stats)
    app.add_typer(data_app, name="data")


def convert_refer(
    root: Path = typer.Option(..., "--root", help="Folder holding <dataset>/refs(<split-by>).p and images/."),
    dataset: str = typer.Option("refcoco", "--dataset", help="refcoco, refcoco+, refcocog or refclef."),
    split_by: str = typer.Option("unc", "--split-by", help="unc, google, umd or berkeley."),
    split: Optional[str] = typer.Option(
        None, "--split", help="train, val, test, testA, testB, ... (refer API rules); default: all."
    ),
    out: Path = _OUT,
    images: Optional[Path] = typer.Option(None, "--images", help="Photo folder (default: the refer layout's)."),
    mask_format: str = _MASK_FORMAT,
) -> None:
    """Convert RefCOCO / RefCOCO+ / RefCOCOg / RefClef (refer API layout): one sample per sentence."""
    from refseg.data.refer import load_refer

    samples = load_refer(root, dataset, split_by, split, images=images)
    _write(samples, out, mask_format, len(samples), f"{dataset}({split_by}) {split or 'all'}")


def convert_coco_instances(
    root: Path = typer.Option(..., "--root", help="Folder holding annotations/ and images/."),
    split: str = typer.Option("val", "--split", help="train or val."),
    year: str = typer.Option("2017", "--year"),
    out: Path = _OUT,
    images: Optional[Path] = typer.Option(None, "--images", help="Photo folder (default: ROOT/images/<split><year>)."),
    synthesize: int = _SYNTHESIZE,
    seed: int = _SEED,
    limit: int = _LIMIT,
    mask_format: str = _MASK_FORMAT,
) -> None:
    """Convert COCO instances: category names, or synthesized referring expressions."""
    from refseg.data.coco import CocoInstances

    _convert_regions(CocoInstances(root, split, year, images=images), out, synthesize, seed, mask_format, limit)


def convert_coco_panoptic(
    root: Path = typer.Option(..., "--root", help="Folder holding annotations/ (JSON + PNGs) and images/."),
    split: str = typer.Option("val", "--split", help="train or val."),
    year: str = typer.Option("2017", "--year"),
    out: Path = _OUT,
    images: Optional[Path] = typer.Option(None, "--images", help="Photo folder (default: ROOT/images/<split><year>)."),
    synthesize: int = _SYNTHESIZE,
    seed: int = _SEED,
    limit: int = _LIMIT,
    mask_format: str = _MASK_FORMAT,
) -> None:
    """Convert COCO panoptic (things and stuff): category names, or synthesized expressions."""
    from refseg.data.coco import CocoPanoptic

    _convert_regions(CocoPanoptic(root, split, year, images=images), out, synthesize, seed, mask_format, limit)


def convert_camvid(
    root: Path = typer.Option(..., "--root", help="Folder holding <split>/ and <split>annot/."),
    split: str = typer.Option("train", "--split", help="train, val or test."),
    out: Path = _OUT,
    synthesize: int = _SYNTHESIZE,
    seed: int = _SEED,
    min_fraction: float = typer.Option(
        0.001, "--min-fraction", min=0.0, max=1.0, help="Drop regions smaller than this fraction of the image."
    ),
    limit: int = _LIMIT,
    mask_format: str = _MASK_FORMAT,
) -> None:
    """Convert CamVid label maps (stuff regions + car/pedestrian/bicyclist instances)."""
    from refseg.data.camvid import CamVid

    _convert_regions(CamVid(root, split, min_fraction), out, synthesize, seed, mask_format, limit)


def _convert_regions(reader, out: Path, synthesize: int, seed: int, mask_format: str, limit: int) -> None:
    from itertools import islice

    import numpy as np

    from refseg.data.coco import region_samples

    rng = np.random.default_rng(seed)
    total = min(limit, len(reader)) if limit else len(reader)

    def samples() -> Iterator:
        for item in _progress(islice(reader, total), total, f"reading {reader.source}"):
            yield from region_samples(item, synthesize, rng)

    _write(samples(), out, mask_format, None, reader.source)


def _write(samples: Iterable, out: Path, mask_format: str, total: Optional[int], what: str) -> None:
    from refseg.data.manifest import write_manifest

    counts = {"samples": 0, "no target": 0}

    def counted() -> Iterator:
        for sample in samples:
            counts["samples"] += 1
            counts["no target"] += sample.mask is None
            yield sample

    stream = _progress(counted(), total, f"writing {what}") if total is not None else counted()
    manifest = write_manifest(stream, out, mask_format=mask_format)
    typer.echo(f"{manifest}: {counts['samples']} samples ({counts['no target']} without target) from {what}")


def _progress(items: Iterable, total: Optional[int], description: str) -> Iterable:
    from rich.progress import track

    return track(items, total=total, description=description, transient=True)


def shapes(
    n: int = typer.Option(1000, "--n", min=1, help="Number of samples."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = _OUT,
    size: int = typer.Option(128, "--size", min=32, help="Image side in pixels."),
) -> None:
    """Generate the ShapeRef diagnostic benchmark (drawn shapes with checked expressions)."""
    from refseg.data.shapes import write_shaperef

    manifest = write_shaperef(out, n, seed, size=size)
    typer.echo(f"{manifest}: {n} ShapeRef samples (seed {seed})")


def stats(
    manifest: Path = typer.Argument(..., help="A refs.jsonl manifest."),
    buckets: str = typer.Option(
        "refcoco", "--buckets", help="Length buckets: refcoco, refcoco+, refcocog or refclef (RMI's tables)."
    ),
    top: int = typer.Option(20, "--top", min=1, help="Categories shown."),
) -> None:
    """Counts, no-target samples, expression lengths and categories of a manifest."""
    from collections import Counter

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from refseg.data.manifest import read_manifest
    from refseg.engine.metrics import LENGTH_BUCKETS, length_bucket_labels
    from refseg.errors import ConfigError
    from refseg.models.text import split_words

    if buckets not in LENGTH_BUCKETS:
        raise ConfigError(f"unknown --buckets {buckets!r}; choose from {', '.join(LENGTH_BUCKETS)}")
    samples = read_manifest(manifest, check_files=False)
    console = Console()

    splits = Counter(s.split or "-" for s in samples)
    overview = Table(title=f"{manifest} ({len(samples)} samples)")
    for column in ("split", "samples", "images", "no target", "mean words"):
        overview.add_column(column, justify="right")
    for split in sorted(splits):
        part = [s for s in samples if (s.split or "-") == split]
        overview.add_row(
            split, str(len(part)), str(len({s.image_id or str(s.image) for s in part})),
            str(sum(not s.has_target for s in part)), f"{np.mean([len(split_words(s.sentence)) for s in part]):.2f}",
        )
    console.print(overview)

    edges = LENGTH_BUCKETS[buckets]
    lengths = np.array([len(split_words(s.sentence)) for s in samples], dtype=int)
    bucket_of = np.searchsorted(np.asarray(edges), lengths, side="left")
    histogram = Table(title=f"Words ({buckets} buckets)")
    histogram.add_column("words", justify="right")
    histogram.add_column("samples", justify="right")
    histogram.add_column("%", justify="right")
    for index, label in enumerate(length_bucket_labels(edges)):
        count = int((bucket_of == index).sum())
        histogram.add_row(label, str(count), f"{100 * count / max(len(samples), 1):.1f}")
    console.print(histogram)

    categories = Counter(s.meta.category for s in samples if s.meta.category)
    if categories:
        table = Table(title=f"Categories ({len(categories)}; top {min(top, len(categories))})")
        table.add_column("category")
        table.add_column("samples", justify="right")
        for name, count in categories.most_common(top):
            table.add_row(str(name), str(count))
        console.print(table)
