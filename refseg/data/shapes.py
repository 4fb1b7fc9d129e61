"""ShapeRef: a procedurally drawn diagnostic benchmark for referring segmentation.

Each scene has stuff-like background bands (sky, wall, grass, water, sand, floor) and a few shapes (circle,
square, triangle, star, ring, diamond, cross) with a colour from a measured-distinct palette, a size and a
texture (solid, striped, dotted). Later shapes are drawn over earlier ones and every mask holds exactly the
*visible* pixels. Expressions come from the checker and realizer of :mod:`refseg.data.synthesis`, so each is
verified against every object of the scene: attribute binding ("red circle" when there is also a red square
and a blue circle), spatial selectors and relations, ordinals, comparatives, sets and no-target expressions.

Scenes are drawn with Pillow (masks) and numpy (colours and textures); generation is seeded per scene
(``numpy.random.default_rng([seed, scene_index])``), so a sample does not depend on options of other scenes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw

from refseg.data.sample import RefSample, SampleMeta
from refseg.data.synthesis import Describer, Entity, Realizer, Scene
from refseg.errors import ConfigError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 220, 30),
    "green": (40, 170, 60),
    "blue": (30, 80, 220),
    "purple": (130, 50, 180),
    "pink": (255, 120, 190),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "cross")
TEXTURES = ("solid", "striped", "dotted")
# Background bands: name → base colour. Sky and wall go on top, the others below the horizon.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "sky": (150, 195, 235),
    "wall": (165, 160, 155),
    "grass": (70, 110, 40),
    "water": (35, 80, 125),
    "sand": (215, 195, 150),
    "floor": (140, 95, 60),
}
TOP_BANDS = ("sky", "wall")
BOTTOM_BANDS = ("grass", "water", "sand", "floor")
DEFAULT_KIND_WEIGHTS = {"category": 0.1, "attribute": 0.2, "spatial": 0.15, "ordinal": 0.08, "size": 0.1,
                        "relation": 0.15, "multi": 0.1, "stuff": 0.04, "none": 0.08}
SPLITS = ("train",) * 8 + ("val", "test")


@dataclass
class Shape:
    """A drawn shape: its attributes, full outline and visible pixels."""

    id: int
    kind: str
    colour: str
    texture: str
    radius: float
    centre: tuple[float, float]
    outline: np.ndarray  # bool [H, W], before occlusion
    visible: np.ndarray  # bool [H, W], after later shapes were drawn


@dataclass
class ShapeScene:
    """One drawn scene: RGB image, background bands and shapes (ids: bands first, then shapes)."""

    image: np.ndarray
    bands: list[tuple[int, str, np.ndarray]]  # (id, name, visible mask)
    shapes: list[Shape]

    def entities(self) -> list[Entity]:
        """The scene as the semantic checker sees it (colours and textures are known, not measured)."""
        stuff = [Entity(i, name, mask, isthing=False) for i, name, mask in self.bands if mask.any()]
        things = [Entity(s.id, s.kind, s.visible, colours={s.colour: 1.0}, attrs={"texture": s.texture})
                  for s in self.shapes]
        return stuff + things

    def masks(self) -> dict[int, np.ndarray]:
        """Visible mask of every object, by id."""
        return {**{i: m for i, _, m in self.bands}, **{s.id: s.visible for s in self.shapes}}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Outline points of the polygonal shapes."""
    if kind == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(0.8 * x, 0.8 * y) for x, y in corners]
    elif kind == "diamond":
        pts = [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
    elif kind == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in np.radians([-90, 30, 150])]
    elif kind == "star":
        pts = [((1.0 if i % 2 == 0 else 0.45) * np.cos(a), (1.0 if i % 2 == 0 else 0.45) * np.sin(a))
               for i, a in enumerate(np.radians(np.arange(-90, 270, 36)))]
    elif kind == "cross":
        w = 0.33
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
               (-1, -w), (-w, -w)]
    else:
        raise ValueError(kind)
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def draw_outline(kind: str, centre: tuple[float, float], radius: float, size: tuple[int, int],
                 angle: float = 0.0) -> np.ndarray:
    """Boolean mask of one shape (no anti-aliasing, so the mask is exactly the painted pixels)."""
    height, width = size
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = centre
    if kind in ("circle", "ring"):
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        if kind == "ring":
            inner = 0.55 * radius
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, radius, angle), fill=1)
    return np.array(canvas, dtype=bool)


def _shade(rgb: tuple[int, int, int], factor: float) -> np.ndarray:
    return np.clip(np.array(rgb, dtype=np.float32) * factor, 0, 255)


def _texture_mask(texture: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Pixels painted in the secondary shade for a texture (stripes or dots), before clipping to the shape."""
    height, width = size
    ys, xs = np.mgrid[0:height, 0:width]
    if texture == "striped":
        period = int(rng.integers(5, 8))
        return ((xs + ys) // max(1, period // 2)) % 2 == 0
    if texture == "dotted":
        step = int(rng.integers(5, 7))
        return ((xs % step) - step // 2) ** 2 + ((ys % step) - step // 2) ** 2 <= 2
    return np.zeros(size, dtype=bool)


def _paint_background(name: str, region: np.ndarray, image: np.ndarray, rng: np.random.Generator) -> None:
    """Fill ``region`` of ``image`` with a stuff-like texture of the named background."""
    height, width = region.shape
    base = np.array(BACKGROUNDS[name], dtype=np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if name == "sky":  # lighter towards the horizon
        layer = base + (ys / height)[..., None] * 40
    elif name == "water":  # horizontal ripples
        ripple = np.sin(ys * 0.9 + 2 * np.sin(xs * 0.15 + rng.uniform(0, 6))) > 0.85
        layer = base + ripple[..., None] * 35
    elif name == "grass":  # blades as speckle noise
        layer = base + rng.normal(0, 14, (height, width, 1)).astype(np.float32)
    elif name == "sand":
        layer = base + rng.normal(0, 8, (height, width, 1)).astype(np.float32)
    elif name == "floor":  # planks
        layer = base - ((xs % 16) < 1)[..., None] * 40
    else:  # wall: bricks
        mortar = ((ys % 10) < 1) | (((xs + 10 * ((ys // 10) % 2)) % 20) < 1)
        layer = base + mortar[..., None] * 35
    image[region] = np.clip(layer, 0, 255)[region]


def generate_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 128),
                   n_shapes: tuple[int, int] = (2, 6), min_visible: float = 0.6) -> ShapeScene:
    """Draw one scene: 1–2 background bands, then ``n_shapes`` shapes (inclusive range) back to front.

    Each scene uses a few shape kinds and colours so that repeats (and thus binding, ordinals and sets) are
    common. A shape is only placed if every earlier shape keeps ``min_visible`` of its outline.
    """
    height, width = size
    image = np.zeros((height, width, 3), dtype=np.float32)
    bands: list[tuple[int, str, np.ndarray]] = []
    if rng.random() < 0.8:
        horizon = height * rng.uniform(0.3, 0.6) + np.sin(np.arange(width) * rng.uniform(0.02, 0.08)) * 3
        top = np.arange(height)[:, None] < horizon[None, :]
        names = [TOP_BANDS[int(rng.integers(len(TOP_BANDS)))], BOTTOM_BANDS[int(rng.integers(len(BOTTOM_BANDS)))]]
        masks = [top, ~top]
    else:
        names = [("wall", "floor", "grass", "sand")[int(rng.integers(4))]]
        masks = [np.ones((height, width), dtype=bool)]
    for index, (name, mask) in enumerate(zip(names, masks)):
        _paint_background(name, mask, image, rng)
        bands.append((index, name, mask))

    kinds = rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)
    colours = rng.choice(list(PALETTE), size=int(rng.integers(2, 4)), replace=False)
    target_count = int(rng.integers(n_shapes[0], n_shapes[1] + 1))
    shapes: list[Shape] = []
    short = min(height, width)
    for _ in range(12 * target_count):
        if len(shapes) == target_count:
            break
        radius = short * rng.uniform(0.07, 0.18)
        centre = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        kind = str(kinds[int(rng.integers(len(kinds)))])
        outline = draw_outline(kind, centre, radius, size, angle=rng.uniform(-0.2, 0.2))
        if outline.sum() < 30:
            continue
        covered = [(s.visible & ~outline).sum() / s.outline.sum() for s in shapes]
        if any(c < min_visible for c in covered):
            continue
        for s in shapes:
            s.visible &= ~outline
        colour = str(colours[int(rng.integers(len(colours)))])
        texture = TEXTURES[int(rng.choice(3, p=[0.6, 0.2, 0.2]))]
        paint = np.broadcast_to(_shade(PALETTE[colour], 1.0), image.shape).copy()
        paint[_texture_mask(texture, size, rng)] = _shade(PALETTE[colour], 0.55)
        image[outline] = paint[outline]
        shapes.append(Shape(len(bands) + len(shapes), kind, colour, texture, radius, centre, outline,
                            outline.copy()))
    occupied = np.zeros((height, width), dtype=bool)
    for shape in shapes:
        occupied |= shape.outline
    bands = [(i, name, mask & ~occupied) for i, name, mask in bands]
    return ShapeScene(np.round(image).astype(np.uint8), bands, shapes)


def _check_options(kinds: Iterable[str] | None, min_words: int, max_words: int | None) -> dict[str, float]:
    weights = dict(DEFAULT_KIND_WEIGHTS)
    if kinds is not None:
        kinds = list(kinds)
        unknown = sorted(set(kinds) - set(weights))
        if unknown:
            raise ConfigError(f"unknown ShapeRef kind(s) {', '.join(unknown)}; choose from {', '.join(weights)}")
        if not kinds:
            raise ConfigError("ShapeRef needs at least one expression kind")
        weights = {k: w for k, w in weights.items() if k in kinds}
    if min_words < 1 or (max_words is not None and max_words < min_words):
        raise ConfigError(f"invalid expression length range {min_words}..{max_words}")
    return weights


def scene_samples(scene: ShapeScene, rng: np.random.Generator, count: int, weights: dict[str, float],
                  min_words: int = 1, max_words: int | None = None, filler: float = 0.12) -> list[dict]:
    """Up to ``count`` checked expressions for one scene: dicts with text, ids, kind, difficulty."""
    checker = Scene(scene.entities(), scene.image.shape[:2])
    describer = Describer(checker, rng, generic_noun="shape", absent_nouns=SHAPES, absent_colours=PALETTE)
    realizer = Realizer(rng, filler=filler)
    names, probs = list(weights), np.array(list(weights.values()), dtype=np.float64)
    things = [e for e in checker.entities if e.isthing]
    stuff = [e for e in checker.entities if not e.isthing]
    out: list[dict] = []
    seen: set[str] = set()
    for _ in range(8 * count):
        if len(out) == count:
            break
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        pool = stuff if kind == "stuff" else things
        if kind not in ("multi", "none") and not pool:
            continue
        target = pool[int(rng.integers(len(pool)))] if kind not in ("multi", "none") else None
        description = describer.describe(kind, target)
        if description is None:
            continue
        for _attempt in range(4):  # rephrase until the length fits
            text = realizer.realize(description.query, checker)
            n_words = len(text.split())
            if n_words >= min_words and (max_words is None or n_words <= max_words):
                break
        else:
            continue
        if text in seen:
            continue
        seen.add(text)
        out.append({"text": text, "ids": sorted(description.target_ids), "kind": kind,
                    "difficulty": description.query.difficulty, "n_words": n_words})
    return out


def generate_samples(n: int, seed: int = 0, size: int | tuple[int, int] = 128,
                     kinds: Iterable[str] | None = None, per_scene: int = 4, min_words: int = 1,
                     max_words: int | None = None, n_shapes: tuple[int, int] = (2, 6),
                     filler: float = 0.12) -> list[RefSample]:
    """``n`` ShapeRef samples in memory (images and masks as arrays), deterministic given ``seed``.

    ``kinds`` restricts the expression kinds (e.g. ``["attribute"]`` for quick overfitting tests);
    ``min_words`` / ``max_words`` bound the expression length. Every scene belongs to one split
    (8 train : 1 val : 1 test by scene index).
    """
    if n < 0:
        raise ConfigError(f"number of samples must be >= 0, got {n}")
    weights = _check_options(kinds, min_words, max_words)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    if min(shape) < 32:
        raise ConfigError(f"ShapeRef images must be at least 32 pixels a side, got {shape}")
    samples: list[RefSample] = []
    scene_index = 0
    while len(samples) < n:
        if scene_index > 50 * n + 100:
            raise ConfigError(f"could not generate {n} samples with kinds={sorted(weights)} and "
                              f"length {min_words}..{max_words}; relax the options")
        rng = np.random.default_rng([seed, scene_index])
        scene = generate_scene(rng, shape, n_shapes)
        masks = scene.masks()
        for k, expr in enumerate(scene_samples(scene, rng, min(per_scene, n - len(samples)), weights,
                                               min_words, max_words, filler)):
            target = np.logical_or.reduce([masks[i] for i in expr["ids"]]) if expr["ids"] else None
            samples.append(RefSample(
                id=f"shaperef-{seed}-{scene_index:06d}-{k}", image=scene.image, sentence=expr["text"],
                mask=target, split=SPLITS[scene_index % len(SPLITS)], source="shaperef",
                image_id=f"shaperef-{seed}-{scene_index:06d}",
                meta=SampleMeta(kind=expr["kind"], extra={"difficulty": expr["difficulty"], "n_words": expr["n_words"],
                                                          "target_ids": expr["ids"]}),
            ))
        scene_index += 1
    return samples


def write_shaperef(out: Path, n: int, seed: int, **options) -> Path:
    """Write ``n`` samples as ``out/refs.jsonl`` + PNG images and masks; returns the manifest path.

    ``options`` are those of :func:`generate_samples` (size, kinds, per_scene, min_words, max_words, …).
    """
    from refseg.data.manifest import write_manifest

    try:
        samples = generate_samples(n, seed, **options)
    except TypeError as exc:
        raise ConfigError(f"bad ShapeRef option: {exc}") from None
    return write_manifest(samples, Path(out))
