"""Caption grounding: noun phrases of COCO captions → referring expressions for unique regions.

A caption such as "A young boy in a red shirt throws a frisbee" contains the phrase "a young boy in a red
shirt", whose head noun (*boy*) maps to the category *person*. When the photo has exactly one person region
(and it is large enough to be a target) the phrase refers to it unambiguously, so it becomes a training
expression written by a human. Chunking is lexicon based: walk left from the head over modifiers until a
determiner or a function word, and for people attach a following "in / wearing / with … <garment>" phrase.
"""
from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from refseg.data.sample import Region
from refseg.data.synthesis import SynthExpression
from refseg.labels import clean_category
from refseg.vocabulary import COLLECTIVE_NOUNS, head_noun_categories

_DETERMINERS = frozenset({"a", "an", "the", "this", "that", "his", "her", "their", "its", "one"})
# Words that end a noun phrase on its left: verbs, prepositions, conjunctions, pronouns, numbers.
_BOUNDARIES = frozenset({
    "is", "are", "was", "were", "be", "has", "have", "with", "and", "or", "of", "on", "in", "at", "by", "to",
    "for", "from", "near", "next", "behind", "under", "over", "while", "as", "into", "onto", "top", "front",
    "some", "two", "three", "four", "several", "many", "other", "another", "there", "who", "which", "that",
    "it", "he", "she", "they", "very", "up", "down", "out", "off", "holding", "sitting", "standing", "riding",
    "playing", "eating", "looking", "walking", "wearing", "carrying", "using", "lying", "laying", "flying",
})
_GARMENTS = frozenset({
    "shirt", "jacket", "hat", "dress", "helmet", "uniform", "coat", "top", "shorts", "pants", "suit",
    "sweater", "hoodie", "cap", "jersey", "skirt", "vest", "jeans", "outfit", "sweatshirt", "t-shirt",
    "tie", "apron", "costume", "wetsuit", "glasses", "sunglasses",
})
_ATTACHING = frozenset({"in", "wearing", "with"})


@lru_cache(maxsize=1)
def _lexicon() -> tuple[dict[str, str], frozenset[str]]:
    """All head words → category, and the words that name one single thing."""
    singular = frozenset(head_noun_categories(plurals=False)) - COLLECTIVE_NOUNS
    return head_noun_categories(plurals=True), singular


def noun_phrases(caption: str) -> list[tuple[str, str]]:
    """(phrase, clean category) for every singular noun phrase whose head noun is in the lexicon."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", caption.lower())
    heads, singular = _lexicon()
    found = []
    i = 0
    while i < len(words):
        two = " ".join(words[i:i + 2])
        width = 2 if two in heads else 1
        head = two if width == 2 else words[i]
        category = heads.get(head)
        if category is None or head not in singular:
            i += 1
            continue
        start = i
        while start > 0 and i - start < 4 and words[start - 1] not in _BOUNDARIES:
            start -= 1
            if words[start] in _DETERMINERS:
                break
        end = i + width
        if category == "person" and end < len(words) and words[end] in _ATTACHING:
            for stop in range(end + 1, min(end + 6, len(words))):
                if words[stop] in _GARMENTS:
                    end = stop + 1
                    break
        found.append((" ".join(words[start:end]), category))
        i += width
    return found


def ground_captions(captions: list[str], regions: list[Region], min_area: float = 0.01) -> list[SynthExpression]:
    """Expressions (kind ``"caption"``) for the noun phrases whose category has exactly one region.

    Crowd regions count for uniqueness but are never targets; targets must cover ``min_area`` of the image.
    """
    by_category: dict[str, list[Region]] = {}
    for region in regions:
        by_category.setdefault(clean_category(region.category), []).append(region)
    results, seen = [], set()
    for caption in captions:
        for phrase, category in noun_phrases(caption):
            matches = by_category.get(category, [])
            if len(matches) != 1 or phrase in seen:
                continue
            region = matches[0]
            mask = np.asarray(region.mask, dtype=bool)
            if region.iscrowd or mask.sum() < min_area * mask.size:
                continue
            seen.add(phrase)
            results.append(SynthExpression(phrase, [region.id], "caption", meta={"caption": caption}))
    return results
