"""Words for synthesized expressions: category nouns, their synonyms and hypernyms, colour names.

Every *surface noun* denotes a set of clean categories (``"animal"`` → dog, cat, horse …), so the semantic
checker in :mod:`refseg.data.synthesis` can test a phrase like "the animal" against every region: a noun is
true of a region when the region's category is in the noun's denotation. Colour names are measured from
pixels in CIELAB (lightness, chroma, hue), never from the mean colour of a region.
"""
from __future__ import annotations

import re

import numpy as np
from skimage.color import rgb2lab

from refseg.labels import COCO_THING_CATEGORIES, clean_category

# ---------------------------------------------------------------------------------------------- categories
# Plurals that are not "noun + s". Mass nouns (sky, water, grass …) are their own plural.
_PLURALS = {
    "person": "people", "man": "men", "woman": "women", "child": "children", "sheep": "sheep",
    "mouse": "mice", "knife": "knives", "bus": "buses", "glass": "glasses", "wine glass": "wine glasses",
    "bench": "benches", "sandwich": "sandwiches", "couch": "couches", "toothbrush": "toothbrushes",
    "box": "boxes", "cross": "crosses", "shelf": "shelves", "skis": "skis", "scissors": "scissors",
    "broccoli": "broccoli", "trees": "trees", "rocks": "rocks", "blinds": "blinds", "stairs": "stairs",
    "cyclist": "cyclists", "dress": "dresses", "giraffe": "giraffes", "zebra": "zebras",
}
MASS_NOUNS = frozenset({
    "sky", "water", "grass", "snow", "sand", "dirt", "gravel", "pavement", "wood floor", "food", "fruit",
    "paper", "cardboard", "railroad", "trees", "rocks", "broccoli", "ground", "sea", "blinds", "stairs",
})


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun; mass nouns stay as they are."""
    if noun in MASS_NOUNS:
        return noun
    if noun in _PLURALS:
        return _PLURALS[noun]
    head, _, last = noun.rpartition(" ")
    if last in _PLURALS:
        return f"{head} {_PLURALS[last]}".strip()
    if re.search(r"(s|x|z|ch|sh)$", last):
        return noun + "es"
    if re.search(r"[^aeiou]y$", last):
        return noun[:-1] + "ies"
    return noun + "s"


# Hypernyms and synonyms used when *generating*: each surface noun is true of every clean category in its
# set. Only truthful words go here (a person may be a woman, so "man" is not a generation synonym).
_GROUPS = {
    "animal": {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"},
    "vehicle": {"bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"},
    "food": {"banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
             "cake", "food", "fruit"},
    "bike": {"bicycle", "motorcycle"},
    "plane": {"airplane"},
    "motorbike": {"motorcycle"},
    "doughnut": {"donut"},
    "television": {"tv"},
    "sofa": {"couch"},
    "ship": {"boat"},
    "ground": {"dirt", "gravel", "sand", "pavement", "sidewalk", "road", "floor", "wood floor"},
    "fridge": {"refrigerator"},
    "laptop computer": {"laptop"},
    "ocean": {"sea"},
    "kitty": {"cat"},
    "shape": {"circle", "square", "triangle", "star", "ring", "diamond", "cross"},
}


def surface_nouns(category: str) -> list[str]:
    """Nouns that are true of a clean category: the category itself first, then synonyms and hypernyms."""
    nouns = [category]
    nouns += [word for word, members in _GROUPS.items() if category in members and word != category]
    return nouns


def denotation(noun: str) -> frozenset[str]:
    """Clean categories a surface noun is listed as true of (see :func:`is_a` for compounds)."""
    return frozenset(_GROUPS.get(noun, set()) | {noun})


def is_a(category: str, noun: str) -> bool:
    """Is a region of this clean category called ``noun``? Compounds count: a 'stone wall' is a 'wall'."""
    return category in denotation(noun) or category.endswith(" " + noun)


# Head nouns of human language (captions) → clean category. Wider than the generation synonyms.
_HEAD_NOUNS = {
    "person": ["person", "man", "woman", "men", "women", "guy", "lady", "boy", "girl", "child", "kid",
               "people", "player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "gentleman",
               "toddler", "baby", "teenager", "adult", "batter", "catcher", "pitcher", "chef", "cook",
               "officer", "worker", "couple", "crowd", "tourist", "spectator", "athlete", "biker", "driver",
               "passenger", "pedestrian", "bride", "groom", "mom", "mother", "dad", "father", "son", "daughter",
               "infant", "teen", "student", "referee", "umpire", "cop", "policeman", "soldier", "customer",
               "vendor", "fan", "dude", "gal", "grandma", "grandpa", "kiddo"],
    "dog": ["dog", "puppy", "pup", "doggy"],
    "cat": ["cat", "kitten", "kitty"],
    "horse": ["horse", "pony", "foal"],
    "cow": ["cow", "cattle", "bull", "calf", "ox", "oxen"],
    "sheep": ["sheep", "lamb", "ram", "goat"],
    "bird": ["bird", "duck", "seagull", "gull", "pigeon", "parrot", "goose", "swan", "owl", "eagle"],
    "bear": ["bear", "grizzly"],
    "airplane": ["airplane", "plane", "jet", "aircraft", "airliner"],
    "bicycle": ["bicycle", "bike", "cycle"],
    "motorcycle": ["motorcycle", "motorbike", "scooter", "moped"],
    "car": ["car", "taxi", "cab", "sedan", "suv", "van"],
    "truck": ["truck", "lorry", "pickup"],
    "boat": ["boat", "ship", "canoe", "kayak", "sailboat", "yacht", "ferry"],
    "couch": ["couch", "sofa", "loveseat"],
    "tv": ["tv", "television", "monitor", "screen"],
    "table": ["table", "desk"],
    "phone": ["phone", "cellphone", "smartphone"],
    "ball": ["ball", "football", "soccer ball", "tennis ball", "baseball", "basketball"],
    "plant": ["plant", "houseplant"],
    "refrigerator": ["refrigerator", "fridge"],
    "donut": ["donut", "doughnut"],
    "laptop": ["laptop", "notebook"],
    "cup": ["cup", "mug"],
    "teddy bear": ["teddy bear", "teddy", "stuffed animal"],
    "sea": ["sea", "ocean"],
    "road": ["road", "street", "highway"],
    "building": ["building", "skyscraper", "tower"],
    "trees": ["tree", "trees", "forest"],
    "mountain": ["mountain", "mountains", "hill", "hills"],
}


#: The 80 COCO thing categories, cleaned.
COCO_THINGS = tuple(clean_category(name) for _, name in COCO_THING_CATEGORIES)
COLLECTIVE_NOUNS = frozenset({"people", "men", "women", "cattle", "crowd", "couple", "oxen", "trees",
                              "mountains", "hills"})


def head_noun_categories(plurals: bool = True) -> dict[str, str]:
    """Word → clean category for grounding human text (with ``plurals``, plural forms too)."""
    table: dict[str, str] = {}
    for category, words in [(c, [c]) for c in COCO_THINGS] + list(_HEAD_NOUNS.items()):
        for word in words:
            table[word] = category
            if plurals:
                table[plural(word)] = category
    return table


# --------------------------------------------------------------------------------------------------- colours
COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")


def _name_lab(lab: np.ndarray) -> np.ndarray:
    """Colour-name index per Lab pixel (index into COLOUR_NAMES, -1 = no basic name, e.g. skin, beige)."""
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    idx = {name: i for i, name in enumerate(COLOUR_NAMES)}
    out = np.full(lightness.shape, -1, dtype=np.int8)

    achromatic = chroma < 14
    out[achromatic & (lightness >= 80)] = idx["white"]
    out[achromatic & (lightness <= 25)] = idx["black"]
    out[achromatic & (lightness > 25) & (lightness < 80)] = idx["gray"]

    vivid = chroma >= 22  # between 14 and 22 the hue is unreliable: no name
    reddish = (hue >= 350) | (hue < 50)
    pinkish = reddish & (lightness >= 65) & ((hue < 25) | (hue >= 350))
    out[vivid & reddish & ~pinkish] = idx["red"]
    out[vivid & pinkish] = idx["pink"]
    orangeish = (hue >= 50) & (hue < 82)
    out[vivid & orangeish & (lightness >= 55) & (chroma >= 45)] = idx["orange"]
    out[vivid & orangeish & (lightness < 55) & (lightness > 15)] = idx["brown"]
    out[vivid & (hue >= 82) & (hue < 112) & (lightness >= 60) & (chroma >= 40)] = idx["yellow"]
    out[vivid & (hue >= 112) & (hue < 195)] = idx["green"]
    out[vivid & (hue >= 200) & (hue < 300)] = idx["blue"]
    purple_range = (hue >= 300) & (hue < 350)
    out[vivid & purple_range & (lightness < 55)] = idx["purple"]
    out[vivid & purple_range & (lightness >= 55)] = idx["pink"]
    return out


def colour_shares(pixels: np.ndarray, max_pixels: int = 4000) -> dict[str, float]:
    """Share of each basic colour name among RGB uint8 pixels [N, 3] (deterministic subsample).

    Shares need not sum to 1: pixels with no basic name (skin, beige, olive) count in the total only.
    """
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    if len(pixels) == 0:
        return {}
    if len(pixels) > max_pixels:
        pixels = pixels[:: int(np.ceil(len(pixels) / max_pixels))]
    names = _name_lab(rgb2lab(pixels[None]).reshape(-1, 3))
    counts = np.bincount(names[names >= 0].astype(np.int64), minlength=len(COLOUR_NAMES))
    return {name: float(c) / len(names) for name, c in zip(COLOUR_NAMES, counts) if c}


def dominant_colour(shares: dict[str, float], min_share: float = 0.5, min_ratio: float = 2.0) -> str | None:
    """The colour name that clearly dominates the shares, or None when ambiguous."""
    if not shares:
        return None
    ranked = sorted(shares.items(), key=lambda kv: -kv[1])
    name, share = ranked[0]
    runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
    return name if share >= min_share and share >= min_ratio * runner_up else None


def name_colour(rgb: tuple[int, int, int]) -> str | None:
    """Basic colour name of one RGB triple (None when it has none)."""
    return dominant_colour(colour_shares(np.array([rgb], dtype=np.uint8)))


#: Words for the basic colour names (and the names themselves), for reading colours in human expressions.
COLOUR_WORDS = {**{name: name for name in COLOUR_NAMES}, "grey": "gray", "silver": "gray", "golden": "yellow",
                "gold": "yellow", "blond": "yellow", "blonde": "yellow", "tan": "brown", "beige": "brown",
                "dark": "black", "navy": "blue", "teal": "blue", "maroon": "red", "violet": "purple",
                "crimson": "red", "olive": "green", "lime": "green", "cream": "white", "ivory": "white"}

NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}
