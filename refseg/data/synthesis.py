"""Referring expressions synthesized from segmented regions, each checked true of its target only.

Hu et al. 2016b (§2.2) train on the bare class name of a region ("person"). Here that idea is taken further:
an expression is a small logical form, a :class:`Query` (a noun with optional colour, texture, a selector
such as "leftmost", "second from the right" or "larger", and a relation to another uniquely described
region), and a :class:`Scene` evaluates it against *every* region of the image. Predicates are three-valued
(True / False / unclear): an expression is emitted only when it is clearly true of its target(s) and clearly
false of everything else, so borderline cases ("left of" for two objects one above the other) are dropped
instead of becoming wrong training labels. The realizer then turns the query into one of several phrasings
(1 to 15+ words), including RefCOCO-style short forms ("left zebra", "person on right in red").

ShapeRef (:mod:`refseg.data.shapes`) uses the same checker and realizer on drawn scenes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Iterable, Optional

import numpy as np
from scipy.ndimage import binary_dilation

from refseg.data.sample import Region
from refseg.labels import clean_category
from refseg.vocabulary import (
    MASS_NOUNS,
    NUMBER_WORDS,
    ORDINALS,
    colour_shares,
    denotation,
    dominant_colour,
    is_a,
    plural,
    surface_nouns,
)

Tri = Optional[bool]  # True, False, or None = unclear

KINDS = ("category", "attribute", "spatial", "ordinal", "size", "relation", "multi", "stuff", "none")
CLOTHED = frozenset({"person", "cyclist"})  # their colour is what they wear: "person in red"
# Person colours are measured on the torso; skin tones would otherwise read as orange / brown / pink.
# Fewer visible pixels than this in the measured part (an occluded person whose torso is hidden)
# leave the colour unknown: neither said of the region nor ruled out for it.
MIN_COLOUR_PIXELS = 16
_CLOTHING_COLOURS = frozenset({"red", "yellow", "green", "blue", "purple", "black", "white", "gray"})
SURFACES = frozenset({
    "table", "bed", "couch", "bench", "counter", "shelf", "grass", "snow", "sand", "road", "field", "floor",
    "wood floor", "pavement", "sidewalk", "dirt", "gravel", "platform", "rug", "playingfield", "railroad",
})
SURROUNDS = frozenset({"sky", "water", "sea", "river"})
# Regions absent from the image that a no-target expression may name (COCO things everyone recognises).
ABSENT_CANDIDATES = (
    "person", "dog", "cat", "horse", "cow", "sheep", "elephant", "bear", "zebra", "giraffe", "bird", "car",
    "bus", "truck", "train", "airplane", "boat", "bicycle", "motorcycle", "umbrella", "pizza", "cake",
    "laptop", "tv", "clock", "teddy bear", "kite", "surfboard", "chair", "couch", "bed", "toilet",
)


def tri_and(values: Iterable[Tri]) -> Tri:
    """Kleene conjunction: False if any is False, else None if any is unclear, else True."""
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


# ------------------------------------------------------------------------------------------------ entities
@dataclass(eq=False)
class Entity:
    """A region as the checker sees it: clean category, visible mask, measured colour, attributes.

    ``targetable`` is False for crowd and small regions (never targets); ``negligible`` regions (a few dozen
    pixels) are ignored by singular expressions, as a person would, but block plural ones ("all people").
    """

    id: int
    category: str
    mask: np.ndarray
    colours: dict[str, float] | None = field(default_factory=dict)  # None: not measured
    isthing: bool = True
    attrs: dict[str, str] = field(default_factory=dict)
    targetable: bool = True
    negligible: bool = False

    @cached_property
    def box(self) -> tuple[float, float, float, float]:
        """x0, y0, x1, y1 (exclusive) of the visible pixels."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)

    @cached_property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5

    @cached_property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def colour(self) -> str | None:
        """The clearly dominant colour name, or None."""
        name = dominant_colour(self.colours)
        if self.category in CLOTHED and name not in _CLOTHING_COLOURS:
            return None
        return name

    def colour_is(self, name: str) -> Tri:
        if self.colour == name:
            return True
        if self.colours is None:  # not measured: too few visible pixels
            return None
        return False if self.colours.get(name, 0.0) < 0.15 else None

    @classmethod
    def from_region(cls, region: Region, image: np.ndarray, min_area: float = 0.01,
                    negligible_area: float = 0.0003) -> "Entity":
        """Measure a reader's Region: clean name, dominant colour (persons: torso only), eligibility."""
        mask = np.asarray(region.mask, dtype=bool)
        category = clean_category(region.category)
        colour_mask = mask
        if category in CLOTHED:
            _, y, _, h = region.bbox
            rows = np.zeros(mask.shape[0], dtype=bool)
            rows[int(y + 0.2 * h): int(y + 0.65 * h) + 1] = True
            colour_mask = mask & rows[:, None]
        image_area = mask.shape[0] * mask.shape[1]
        crowd = region.iscrowd
        area = int(mask.sum())
        measured = colour_mask.sum() >= MIN_COLOUR_PIXELS
        return cls(
            id=region.id, category=category, mask=mask, colours=colour_shares(image[colour_mask]) if measured else None,
            isthing=region.isthing, targetable=not crowd and area >= min_area * image_area,
            negligible=not crowd and area < negligible_area * image_area,
        )


# --------------------------------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Query:
    """The meaning of a referring expression.

    ``select`` picks among the regions that pass the filter (noun, colour, texture, relation):
    ``("side", "left")`` leftmost (or, when only one passes, "on the left" of the image),
    ``("middle",)``, ``("ordinal", "left", 2)`` second from the left, ``("size", "largest"|"smallest")``,
    and for plurals ``("half", "right")`` the ones on the right half. ``relation`` is
    ``(name, anchor query)``; the anchor must pick out exactly one region.
    """

    noun: str
    colour: str | None = None
    texture: str | None = None
    select: tuple | None = None
    relation: tuple[str, "Query"] | None = None
    plural: bool = False

    @property
    def difficulty(self) -> int:
        """1 + number of constraints beyond the noun (ordinals count twice), capped at 5."""
        score = 1 + (self.colour is not None) + (self.texture is not None)
        if self.select is not None:
            score += 2 if self.select[0] == "ordinal" else 1
        if self.relation is not None:
            score += self.relation[1].difficulty
        return min(score, 5)


class Scene:
    """All regions of one image plus the predicates that test queries against them."""

    def __init__(self, entities: list[Entity], size: tuple[int, int]):
        self.entities = entities
        self.height, self.width = size
        self.diagonal = float(np.hypot(*size))
        self._relation_cache: dict[tuple[str, int, int], Tri] = {}
        self._anchor_cache: dict[Query, Entity | None] = {}

    def by_id(self, ids: Iterable[int]) -> list[Entity]:
        wanted = set(ids)
        return [e for e in self.entities if e.id in wanted]

    # --- filter
    def holds(self, query: Query, entity: Entity) -> Tri:
        """Does the filter part of ``query`` (everything but ``select``) hold of ``entity``?"""
        if not is_a(entity.category, query.noun):
            return False
        checks: list[Tri] = []
        if query.colour is not None:
            checks.append(entity.colour_is(query.colour))
        if query.texture is not None:
            checks.append(entity.attrs.get("texture") == query.texture)
        if query.relation is not None:
            name, anchor_query = query.relation
            anchor = self.anchor(anchor_query)
            if anchor is None:
                return None
            checks.append(False if anchor is entity else self.relation(name, entity, anchor))
        return tri_and(checks)

    def anchor(self, query: Query) -> Entity | None:
        """The single region an anchor query picks out (None when it picks out none or several)."""
        if query not in self._anchor_cache:
            ids = self.referents(query)
            self._anchor_cache[query] = self.by_id(ids)[0] if ids is not None and len(ids) == 1 else None
        return self._anchor_cache[query]

    def referents(self, query: Query) -> frozenset[int] | None:
        """Ids of the regions the query refers to, or None when any needed predicate is unclear."""
        pool = self.entities if query.plural else [e for e in self.entities if not e.negligible]
        truth = [self.holds(query, e) for e in pool]
        if any(t is None for t in truth):
            return None
        candidates = [e for e, t in zip(pool, truth) if t]
        if query.select is not None:
            chosen = self._select(query.select, candidates)
            if chosen is None:
                return None
            candidates = chosen
        return frozenset(e.id for e in candidates)

    def describes(self, query: Query, target_ids: Iterable[int]) -> bool:
        """True when the query refers to exactly ``target_ids`` (empty = no target) and nothing is unclear."""
        ids = frozenset(target_ids)
        found = self.referents(query)
        if found is None or found != ids:
            return False
        if query.plural:
            return len(ids) >= 2
        return len(ids) <= 1

    # --- selectors
    def _coordinate(self, entity: Entity, side: str) -> float:
        """Position along ``side`` so that smaller = further towards that side."""
        cx, cy = entity.centre
        return {"left": cx, "right": -cx, "top": cy, "bottom": -cy}[side]

    def _margin(self, side: str) -> float:
        return 0.05 * (self.width if side in ("left", "right") else self.height)

    def _select(self, select: tuple, candidates: list[Entity]) -> list[Entity] | None:
        kind = select[0]
        if not candidates:
            return []
        if kind == "side":
            side = select[1]
            if len(candidates) == 1:  # absolute: "the dog on the left" with one dog
                coord = self._coordinate(candidates[0], side)
                extent = self.width if side in ("left", "right") else self.height
                near = coord < extent / 3 if side in ("left", "top") else -coord > 2 * extent / 3
                return candidates if near else None
            return self._ranked(candidates, side, 1)
        if kind == "ordinal":
            _, side, rank = select
            return self._ranked(candidates, side, rank) if len(candidates) > rank else None
        if kind == "middle":
            if len(candidates) != 3:
                return None
            return self._ranked(candidates, "left", 2)
        if kind == "size":
            if len(candidates) < 2:
                return None
            ranked = sorted(candidates, key=lambda e: e.area, reverse=select[1] == "largest")
            first, second = ranked[0].area, ranked[1].area
            clear = first >= 1.6 * second if select[1] == "largest" else second >= 1.6 * first
            return [ranked[0]] if clear else None
        if kind == "half":
            side = select[1]
            axis = 0 if side in ("left", "right") else 1
            extent = self.width if axis == 0 else self.height
            positions = [e.centre[axis] / extent for e in candidates]
            if any(0.42 < p < 0.58 for p in positions):
                return None
            low = side in ("left", "top")
            chosen = [e for e, p in zip(candidates, positions) if (p <= 0.42) == low]
            return chosen if 0 < len(chosen) < len(candidates) else None
        raise ValueError(f"unknown selector {select!r}")

    def _ranked(self, candidates: list[Entity], side: str, rank: int) -> list[Entity] | None:
        """The ``rank``-th region from ``side``, if clearly separated from its neighbours in that order."""
        ordered = sorted(candidates, key=lambda e: self._coordinate(e, side))
        coords = [self._coordinate(e, side) for e in ordered]
        margin = self._margin(side)
        index = rank - 1
        if index > 0 and coords[index] - coords[index - 1] < margin:
            return None
        if index + 1 < len(coords) and coords[index + 1] - coords[index] < margin:
            return None
        return [ordered[index]]

    # --- relations
    def relation(self, name: str, a: Entity, b: Entity) -> Tri:
        key = (name, a.id, b.id)
        if key not in self._relation_cache:
            self._relation_cache[key] = _RELATIONS[name](self, a, b)
        return self._relation_cache[key]

    def _directional(self, a: Entity, b: Entity, axis: int, before: bool) -> Tri:
        """a left of / above b (``before``) or right of / below b along ``axis`` (0 = x, 1 = y).

        Only between two things or two stuff regions ("the sky above the grass", not "the cup below the sky").
        """
        if a.isthing != b.isthing:
            return False if a.isthing else None
        sign = 1.0 if before else -1.0
        ax, bx = sign * a.centre[axis], sign * b.centre[axis]
        _, a_hi = sorted((sign * a.box[axis], sign * a.box[axis + 2]))
        b_lo, b_hi = sorted((sign * b.box[axis], sign * b.box[axis + 2]))
        along = bx - ax
        across = abs(a.centre[1 - axis] - b.centre[1 - axis])
        if ax < b_lo and a_hi <= b_lo + 0.25 * (b_hi - b_lo) and across <= along:
            return True
        return False if ax >= bx else None

    def _gap(self, a: Entity, b: Entity, radius: int) -> bool:
        """Do the masks come within ``radius`` pixels of each other?"""
        x0, y0, x1, y1 = (int(v) for v in a.box)
        y0, x0 = max(0, y0 - radius), max(0, x0 - radius)
        y1, x1 = min(self.height, y1 + radius), min(self.width, x1 + radius)
        grown = binary_dilation(a.mask[y0:y1, x0:x1], iterations=radius)
        return bool((grown & b.mask[y0:y1, x0:x1]).any())

    def _next_to(self, a: Entity, b: Entity) -> Tri:
        if not (a.isthing and b.isthing):
            return None
        if self._gap(a, b, max(2, int(0.02 * self.diagonal))):
            return True
        ax0, ay0, ax1, ay1 = a.box
        bx0, by0, bx1, by1 = b.box
        gap = max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1, 0.0)
        return False if gap > 0.12 * self.diagonal else None

    def _bottom_contact(self, a: Entity, b: Entity) -> float:
        """Fraction of a's columns whose lowest pixel rests on b (looking a few pixels down)."""
        columns = np.nonzero(a.mask.any(axis=0))[0]
        lowest = a.mask.shape[0] - 1 - np.argmax(a.mask[::-1, columns], axis=0)
        below = np.minimum(lowest + max(2, int(0.02 * self.height)), self.height - 1)
        return float(b.mask[below, columns].mean())

    def _surround(self, a: Entity, b: Entity) -> float:
        """Fraction of a thin ring around a that is b."""
        radius = max(2, int(0.015 * self.diagonal))
        x0, y0, x1, y1 = (int(v) for v in a.box)
        y0, x0 = max(0, y0 - radius), max(0, x0 - radius)
        y1, x1 = min(self.height, y1 + radius), min(self.width, x1 + radius)
        inner = a.mask[y0:y1, x0:x1]
        ring = binary_dilation(inner, iterations=radius) & ~inner
        return float(b.mask[y0:y1, x0:x1][ring].mean()) if ring.any() else 0.0

    def _on(self, a: Entity, b: Entity) -> Tri:
        if not a.isthing or b.category not in SURFACES:
            return False if not a.isthing else None
        contact = self._bottom_contact(a, b)
        if contact >= 0.6 and a.box[3] <= b.box[3]:
            return True
        return False if contact < 0.1 and self._surround(a, b) < 0.05 else None

    def _in(self, a: Entity, b: Entity) -> Tri:
        if not a.isthing or b.category not in SURROUNDS:
            return False if not a.isthing else None
        share = self._surround(a, b)
        if share >= 0.6:
            return True
        return False if share < 0.1 else None


_RELATIONS = {
    "left_of": lambda s, a, b: s._directional(a, b, 0, True),
    "right_of": lambda s, a, b: s._directional(a, b, 0, False),
    "above": lambda s, a, b: s._directional(a, b, 1, True),
    "below": lambda s, a, b: s._directional(a, b, 1, False),
    "next_to": Scene._next_to,
    "on": Scene._on,
    "in": Scene._in,
}
RELATIONS = tuple(_RELATIONS)


# ----------------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Description:
    """A checked query with its referents (empty = no target) and its kind."""

    query: Query
    target_ids: frozenset[int]
    kind: str


def _extra_nouns(entity: Entity, generic: str | None) -> list[str]:
    nouns = surface_nouns(entity.category)
    if generic is not None and entity.category in denotation(generic) and generic not in nouns:
        nouns.append(generic)
    return nouns


def _attribute_sets(entity: Entity) -> list[dict[str, str]]:
    """Non-empty combinations of the target's clearly true attributes (smallest first)."""
    attrs = {}
    if entity.colour is not None:
        attrs["colour"] = entity.colour
    if "texture" in entity.attrs:
        attrs["texture"] = entity.attrs["texture"]
    keys = list(attrs)
    sets = [{k: attrs[k]} for k in keys]
    if len(keys) == 2:
        sets.append(dict(attrs))
    return sets


class Describer:
    """Searches for a query of a requested kind that singles out a target, checking it on the scene."""

    def __init__(self, scene: Scene, rng: np.random.Generator, generic_noun: str | None = None,
                 absent_nouns: Iterable[str] = ABSENT_CANDIDATES,
                 absent_colours: Iterable[str] = ("red", "blue", "green", "yellow", "purple", "white", "black"),
                 redundancy: float = 0.25):
        self.scene = scene
        self.rng = rng
        self.generic_noun = generic_noun
        self.absent_nouns = tuple(absent_nouns)
        self.absent_colours = tuple(absent_colours)
        self.redundancy = redundancy

    def _shuffled(self, items: list) -> list:
        order = self.rng.permutation(len(items))
        return [items[i] for i in order]

    def _first_valid(self, queries: list[Query], target_ids: frozenset[int]) -> Query | None:
        for query in queries:
            if self.scene.describes(query, target_ids):
                return query
        return None

    def _bases(self, entity: Entity, with_attributes: bool) -> list[Query]:
        """Noun-only queries, then (optionally) with attribute combinations, each group shuffled."""
        nouns = self._shuffled(_extra_nouns(entity, self.generic_noun))
        bases = [Query(noun) for noun in nouns]
        if with_attributes:
            attributed = [Query(noun, colour=a.get("colour"), texture=a.get("texture"))
                          for noun in nouns for a in _attribute_sets(entity)]
            bases += self._shuffled(attributed)
        return bases

    def _anchors(self, target: Entity) -> list[Query]:
        """Simple unique descriptions of other regions that can serve as anchors.

        An anchor is at least a quarter of the target's size: people locate a table by a cup rarely.
        """
        anchors = []
        for other in self.scene.entities:
            if other is target or not other.targetable or other.area < 0.25 * target.area:
                continue
            options = [Query(noun) for noun in surface_nouns(other.category)]
            if other.colour is not None and other.isthing:
                options.append(Query(other.category, colour=other.colour))
            found = self._first_valid(self._shuffled(options), frozenset({other.id}))
            if found is not None:
                anchors.append(found)
        return self._shuffled(anchors)

    def _embellish(self, query: Query, target_ids: frozenset[int], entity: Entity | None) -> Query:
        """Sometimes add a true but unneeded attribute (people over-specify too)."""
        if entity is None or self.rng.random() >= self.redundancy:
            return query
        for attrs in self._shuffled(_attribute_sets(entity)):
            richer = replace(query, colour=attrs.get("colour", query.colour),
                             texture=attrs.get("texture", query.texture))
            if richer != query and self.scene.describes(richer, target_ids):
                return richer
        return query

    def describe(self, kind: str, target: Entity | None = None) -> Description | None:
        """A checked description of ``kind`` for ``target`` (``multi`` and ``none`` need no target)."""
        if kind == "multi":
            return self._multi()
        if kind == "none":
            return self._none()
        assert target is not None, f"kind {kind!r} needs a target"
        ids = frozenset({target.id})
        if kind in ("category", "stuff"):
            queries = self._bases(target, with_attributes=False)
        elif kind == "attribute":
            queries = self._bases(target, with_attributes=True)[len(_extra_nouns(target, self.generic_noun)):]
        elif kind in ("spatial", "ordinal", "size"):
            selects = {
                "spatial": [("side", s) for s in ("left", "right", "top", "bottom")] + [("middle",)],
                "ordinal": [("ordinal", s, r) for s in ("left", "right") for r in (2, 3)],
                "size": [("size", "largest"), ("size", "smallest")],
            }[kind]
            bases = self._bases(target, True)
            if kind != "spatial":  # "the bigger food", "the second grass from the left": not English
                bases = [b for b in bases if b.noun not in MASS_NOUNS]
            queries = [replace(base, select=sel) for base in bases for sel in self._shuffled(selects)]
        elif kind == "relation":
            relations = self._shuffled(list(RELATIONS))
            anchors = self._anchors(target)[:4]
            queries = [replace(base, relation=(rel, anchor))
                       for base in self._bases(target, True)[:4] for anchor in anchors for rel in relations]
        else:
            raise ValueError(f"unknown kind {kind!r}")
        query = self._first_valid(queries, ids)
        if query is None:
            return None
        if kind not in ("category", "stuff"):
            query = self._embellish(query, ids, target)
        return Description(query, ids, kind)

    def _multi(self) -> Description | None:
        queries = []
        for entity in self.scene.entities:
            if not entity.targetable:
                continue
            for noun in _extra_nouns(entity, self.generic_noun):
                queries.append(Query(noun, plural=True))
                queries.append(Query(noun, plural=True, select=("half", self.rng.choice(
                    ["left", "right", "top", "bottom"]))))
                for attrs in _attribute_sets(entity):
                    queries.append(Query(noun, plural=True, colour=attrs.get("colour"),
                                         texture=attrs.get("texture")))
        for query in self._shuffled(list(dict.fromkeys(queries))):
            ids = self.scene.referents(query)
            if ids is None or len(ids) < 2:
                continue
            if all(e.targetable or not e.isthing for e in self.scene.by_id(ids)):
                return Description(query, ids, "multi")
        return None

    def _none(self) -> Description | None:
        present = {e.category for e in self.scene.entities}
        queries = [Query(noun) for noun in self.absent_nouns
                   if not any(is_a(category, noun) for category in present)]
        for entity in self.scene.entities:
            if entity.targetable and entity.isthing:
                for colour in self.absent_colours:
                    queries.append(Query(entity.category, colour=colour))
        for query in self._shuffled(queries):
            if self.scene.describes(query, frozenset()):
                return Description(query, frozenset(), "none")
        return None


# ------------------------------------------------------------------------------------------------ realizer
_SIDE_PREFIX = {"left": ["left", "leftmost"], "right": ["right", "rightmost"],
                "top": ["top", "upper", "topmost", "highest"], "bottom": ["bottom", "lower", "lowest"]}
_SIDE_SUFFIX = {
    "left": ["on the left", "on the left side", "to the left", "on left", "furthest to the left",
             "on the far left", "at left"],
    "right": ["on the right", "on the right side", "to the right", "on right", "furthest to the right",
              "on the far right", "at right"],
    "top": ["at the top", "highest up", "nearest the top", "at the top of the picture"],
    "bottom": ["at the bottom", "lowest down", "nearest the bottom", "at the bottom of the picture"],
}
_ABSOLUTE_SUFFIX = {
    "left": ["on the left", "on the left side", "on the left of the picture"],
    "right": ["on the right", "on the right side", "on the right of the picture"],
    "top": ["at the top", "at the top of the image"],
    "bottom": ["at the bottom", "at the bottom of the image"],
}
_HALF_SUFFIX = {"left": ["on the left", "on the left side"], "right": ["on the right", "on the right side"],
                "top": ["at the top", "in the upper half"], "bottom": ["at the bottom", "in the lower half"]}
_RELATION_WORDS = {
    "left_of": ["left of", "to the left of", "on the left of"],
    "right_of": ["right of", "to the right of", "on the right of"],
    "above": ["above", "over"],
    "below": ["below", "under", "beneath", "underneath"],
    "next_to": ["next to", "beside", "by", "near"],
    "on": ["on"],
    "in": ["in"],
}
_FURNITURE = frozenset({"table", "bed", "couch", "bench", "counter", "shelf"})
_FILLERS = ["in the picture", "in the image", "in this photo", "in the photo", "that you can see"]
_LONG_FILLERS = ["that you can see in the picture", "that you can see in this image", "in this picture here",
                 "shown in the photo"]
_COLOUR_SUFFIX = ["in {c}", "wearing {c}", "dressed in {c}", "in the {c} top"]


class Realizer:
    """Turns a query into words; ``style`` biases towards short RefCOCO-like or long descriptive forms."""

    def __init__(self, rng: np.random.Generator, filler: float = 0.12, verbose: float = 0.08,
                 article: float = 0.7):
        self.rng = rng
        self.filler = filler
        self.verbose = verbose
        self.article = article

    def _pick(self, options: list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def _noun_phrase(self, query: Query, count: int | None, is_anchor: bool) -> str:
        """Determiner + adjectives + noun + post-modifiers (everything but a relation)."""
        noun = plural(query.noun) if query.plural else query.noun
        adjectives, post = [], []
        texture = {"striped": "striped", "dotted": "dotted", "solid": "plain"}.get(query.texture or "")
        if query.colour is not None:
            if query.noun in CLOTHED and not query.plural:
                post.append(self._pick(_COLOUR_SUFFIX).format(c=query.colour))
            else:
                adjectives.append(query.colour)
        if texture:
            adjectives.insert(0, texture) if self.rng.random() < 0.5 else adjectives.append(texture)
        determiner = "the" if is_anchor or self.rng.random() < self.article else ""
        select = query.select
        if select is not None and select[0] == "side" and select[1] in _SIDE_PREFIX and count != 1 \
                and not query.plural and query.noun not in MASS_NOUNS and self.rng.random() < 0.45:
            adjectives.insert(0, self._pick(_SIDE_PREFIX[select[1]]))
        elif select is not None and select[0] == "side":
            table = _ABSOLUTE_SUFFIX if count == 1 else _SIDE_SUFFIX
            post.insert(0, self._pick(table[select[1]]))
        elif select is not None and select[0] == "middle":
            if self.rng.random() < 0.5:
                adjectives.insert(0, self._pick(["middle", "center"]))
            else:
                post.insert(0, self._pick(["in the middle", "in the center"]))
        elif select is not None and select[0] == "ordinal":
            _, side, rank = select
            adjectives.insert(0, ORDINALS[rank])
            post.insert(0, self._pick([f"from the {side}", f"from {side}"]))
            determiner = "the" if self.rng.random() < 0.8 else ""
        elif select is not None and select[0] == "size":
            largest = select[1] == "largest"
            if count == 2 and self.rng.random() < 0.4:
                word = self._pick(["larger", "bigger"] if largest else ["smaller"])
                noun_plural = plural(query.noun)
                core = " ".join(adjectives + [noun_plural])
                return " ".join(w for w in ["the", word, "of the two", core] + post if w)
            if count == 2:
                word = self._pick(["bigger", "larger", "big"] if largest else ["smaller", "small", "little"])
            else:
                word = self._pick(["biggest", "largest"] if largest else ["smallest", "tiniest"])
            adjectives.insert(0, word)
        elif select is not None and select[0] == "half":
            post.insert(0, self._pick(_HALF_SUFFIX[select[1]]))
        if query.plural:
            determiner = self._pick(["the", "all the"]) if noun in MASS_NOUNS else self._quantifier(count)
        return " ".join(w for w in [determiner] + adjectives + [noun] + post if w)

    def _quantifier(self, count: int | None) -> str:
        if count == 2:
            return self._pick(["both", "the two", "both the", "the"])
        if count is not None and count in NUMBER_WORDS:
            return self._pick(["all", "the", f"the {NUMBER_WORDS[count]}", f"all {NUMBER_WORDS[count]}"])
        return self._pick(["all", "all the", "the"])

    def realize(self, query: Query, scene: Scene | None = None) -> str:
        """Words for ``query``; with a scene, counts (for "both", "the larger of the two") come from it."""
        count = self._count(query, scene)
        verbose = self.rng.random() < self.verbose
        text = self._noun_phrase(query, count, is_anchor=False)
        if query.relation is not None:
            name, anchor = query.relation
            link = "" if query.plural else self._pick(["that is", "which is"] if verbose else ["", "", "that is"])
            words = _RELATION_WORDS[name] + (["on top of"] if name == "on" and anchor.noun in _FURNITURE else [])
            text = " ".join(w for w in [text, link, self._pick(words),
                                        self._noun_phrase(anchor, None, is_anchor=True)] if w)
        if verbose:
            text = f"{text} {self._pick(_LONG_FILLERS)}"
        elif self.rng.random() < self.filler:
            text = f"{text} {self._pick(_FILLERS)}"
        return text

    def _count(self, query: Query, scene: Scene | None) -> int | None:
        """How many regions pass the filter (for plurals: how many are referred to)."""
        if scene is None:
            return None
        if query.plural:
            ids = scene.referents(query)
            return len(ids) if ids is not None else None
        return sum(1 for e in scene.entities if not e.negligible and scene.holds(query, e))


# ---------------------------------------------------------------------------------------- public entry point
@dataclass(frozen=True)
class SynthExpression:
    """A synthesized referring expression and the ids of the regions it refers to (empty = no target)."""

    text: str
    region_ids: list[int]
    kind: str
    difficulty: int = 1
    meta: dict[str, Any] = field(default_factory=dict)


_KIND_WEIGHTS = {"category": 0.14, "attribute": 0.14, "spatial": 0.2, "ordinal": 0.05, "size": 0.07,
                 "relation": 0.18, "stuff": 0.08, "multi": 0.09, "none": 0.03}


def build_scene(regions: list[Region], image: np.ndarray) -> Scene:
    """Measure every region of a photo (non-empty masks only)."""
    entities = [Entity.from_region(r, image) for r in regions if np.asarray(r.mask).any()]
    return Scene(entities, image.shape[:2])


def synthesize(regions: list[Region], image: np.ndarray, n: int, rng: np.random.Generator,
               kinds: Iterable[str] | None = None) -> list[SynthExpression]:
    """Up to ``n`` distinct checked expressions for the regions of one photo.

    Each expression is true of its target region(s) and of no other region (see :class:`Scene`). Crowd and
    small regions are never targets. ``kinds`` restricts the kinds (default: all of :data:`KINDS`).
    """
    scene = build_scene(regions, image)
    weights = {k: w for k, w in _KIND_WEIGHTS.items() if kinds is None or k in set(kinds)}
    things = [e for e in scene.entities if e.targetable and e.isthing]
    stuff = [e for e in scene.entities if e.targetable and not e.isthing]
    if not things:
        weights = {k: w for k, w in weights.items() if k in ("stuff", "none")}
    if not stuff:
        weights.pop("stuff", None)
    if not weights:
        return []
    names, probs = list(weights), np.array(list(weights.values()))
    describer, realizer = Describer(scene, rng), Realizer(rng)
    results: list[SynthExpression] = []
    seen: set[str] = set()
    for _ in range(6 * n):
        if len(results) >= n:
            break
        kind = names[int(rng.choice(len(names), p=probs / probs.sum()))]
        pool = stuff if kind == "stuff" else things
        target = pool[int(rng.integers(len(pool)))] if kind not in ("multi", "none") else None
        description = describer.describe(kind, target)
        if description is None:
            continue
        text = realizer.realize(description.query, scene)
        if text in seen:
            continue
        seen.add(text)
        results.append(SynthExpression(text, sorted(description.target_ids), kind,
                                       description.query.difficulty))
    return results
