"""What an expression says about its target, read from GloVe token ids with word tables.

The instance-aware model (:mod:`refseg.models.instance_ref`) needs, per expression: the category of
the subject ("the **man** in blue"), the category of a related object ("the dog next to the
**bench**"), the colours it names ("the **red** bus") and how many regions it asks for ("**both** zebras",
"**people**", "**two** men"). Word
tables built from :mod:`refseg.vocabulary` (head nouns, synonyms, stuff names, plurals) are
matched against token ids, so the parse is tensor arithmetic that runs inside the graph. The first
category word (or known two-word name: "traffic light", "wood floor") is the subject, the next one
the object; of two category words in a row the second is the noun ("orange **cat**", "baby **giraffe**",
"bus **driver**"). An expression with no known category word falls back on GloVe similarity between its
words and the category names.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.labels import SEGMENTATION_CATEGORIES
from refseg.models import text as T

#: Words that ask for several regions, with how many (0 = all that match).
COUNT_WORDS = {"both": 2, "two": 2, "pair": 2, "three": 3, "four": 4, "five": 5, "all": 0, "every": 0,
               "group": 0, "bunch": 0, "several": 0, "many": 0}
#: Temperature of the GloVe fallback (cosine similarities are small numbers).
_ZERO_SHOT_SCALE = 10.0


@lru_cache(maxsize=1)
def label_names() -> tuple[str, ...]:
    """The label space (COCO things, COCO stuff, CamVid extras) as everyday words."""
    from refseg.labels import clean_category

    return tuple(clean_category(name) for name in SEGMENTATION_CATEGORIES)


@lru_cache(maxsize=1)
def word_tables() -> tuple[dict[str, tuple[frozenset[int], bool]], dict[tuple[str, str], frozenset[int]]]:
    """(word → (labels, plural), (first, second) → labels) over :func:`label_names`.

    A word names every label it is true of: 'wall' names the brick, stone, tiled, wooden and plain
    walls; 'guy' names person. Two-word names are kept as bigrams so 'traffic light' is not 'light'.
    """
    from refseg.vocabulary import COLLECTIVE_NOUNS, head_noun_categories, is_a, plural, surface_nouns

    names = label_names()
    by_name: dict[str, set[int]] = {}
    for index, name in enumerate(names):
        by_name.setdefault(name, set()).add(index)
    words: dict[str, set[int]] = {}
    plurals: set[str] = set(COLLECTIVE_NOUNS)
    for word, category in head_noun_categories(plurals=False).items():
        for form in (word, plural(word)):
            words.setdefault(form, set()).update(by_name.get(category, ()))
            if form != word:
                plurals.add(form)
    for index, name in enumerate(names):
        head = name.split()[-1]
        for noun in {name, head, *surface_nouns(name)}:
            labels = {i for i, other in enumerate(names) if is_a(other, noun)} | {index}
            for form in (noun, plural(noun)):
                words.setdefault(form, set()).update(labels if noun == head else {index})
                if form != noun:
                    plurals.add(form)
    single = {w: (frozenset(v), w in plurals) for w, v in words.items() if " " not in w and v}
    bigrams = {tuple(w.split()): frozenset(v) for w, v in words.items() if len(w.split()) == 2 and v}
    return single, bigrams


@dataclass
class ParsedExpression:
    """Per expression: subject / object label distributions [B, L], whether a category word was
    found [B], how many regions are asked for [B] (1, n, or 0 = all that match), the colour names it
    uses [B, n_colours] (each 1 / number named) and the words' GloVe vectors [B, T, 50] with their mask [B, T]."""

    subject: Tensor
    object: Tensor
    named: Tensor
    count: Tensor
    colours: Tensor
    words: Tensor
    mask: Tensor


class ExpressionParser(nn.Module):
    """Token ids (GloVe rows + 2, as :class:`~refseg.models.text_encoders.RecurrentTextEncoder`
    with ``embedding="glove_full"`` makes them) → :class:`ParsedExpression`. No parameters: the
    tables are rebuilt from the packages at construction and never saved."""

    def __init__(self) -> None:
        super().__init__()
        single, bigrams = word_tables()
        index = T.glove_index()
        n_labels = len(label_names())
        known = [(w, v) for w, v in sorted(single.items()) if w in index]
        self.register_buffer("word_ids", torch.tensor([index[w] + 2 for w, _ in known]), persistent=False)
        self.register_buffer("word_labels", _label_rows([v[0] for _, v in known], n_labels), persistent=False)
        self.register_buffer("word_plural", torch.tensor([v[1] for _, v in known]), persistent=False)
        pairs = [(a, b, v) for (a, b), v in sorted(bigrams.items()) if a in index and b in index]
        self.register_buffer("bigram_ids", torch.tensor([[index[a] + 2, index[b] + 2] for a, b, _ in pairs]).view(-1, 2),
                             persistent=False)
        self.register_buffer("bigram_labels", _label_rows([v for *_, v in pairs], n_labels), persistent=False)
        counts = [(w, n) for w, n in COUNT_WORDS.items() if w in index]
        self.register_buffer("count_ids", torch.tensor([index[w] + 2 for w, _ in counts]), persistent=False)
        self.register_buffer("count_values", torch.tensor([n for _, n in counts]), persistent=False)
        from refseg.vocabulary import COLOUR_NAMES, COLOUR_WORDS

        colours = [(w, COLOUR_NAMES.index(c)) for w, c in sorted(COLOUR_WORDS.items()) if w in index]
        self.register_buffer("colour_ids", torch.tensor([index[w] + 2 for w, _ in colours]), persistent=False)
        self.register_buffer("colour_rows", F.one_hot(torch.tensor([c for _, c in colours]), len(COLOUR_NAMES)).float(),
                             persistent=False)
        stopwords = sorted(w for w in T.STOPWORDS if w in index)
        self.register_buffer("stopword_ids", torch.tensor([index[w] + 2 for w in stopwords]), persistent=False)
        self.register_buffer("glove", T.glove_vectors(), persistent=False)
        self.register_buffer("label_vectors", F.normalize(T.phrase_vectors(label_names()), dim=-1), persistent=False)

    def forward(self, tokens: Tensor, lengths: Tensor) -> ParsedExpression:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        mask = positions[None, :] < lengths[:, None]
        hits = (tokens[..., None] == self.word_ids) & mask[..., None]  # [B, T, W]
        labels = hits.float() @ self.word_labels  # [B, T, L]
        plural = (hits & self.word_plural).any(-1)
        # a two-word name replaces its head word's labels and silences its first word
        pair = (tokens[:, :-1, None] == self.bigram_ids[:, 0]) & (tokens[:, 1:, None] == self.bigram_ids[:, 1])
        pair = pair & mask[:, 1:, None]
        in_pair = pair.any(-1)
        pair_labels = pair.float() @ self.bigram_labels
        labels = torch.cat([labels[:, :1], torch.where(in_pair[..., None], pair_labels, labels[:, 1:])], dim=1)
        labels = torch.cat([torch.where(in_pair[..., None], torch.zeros_like(labels[:, :-1]), labels[:, :-1]),
                            labels[:, -1:]], dim=1)
        is_category = labels.sum(-1) > 0
        # a category word followed by another is a modifier ("orange cat", "bus driver"): the second is the noun
        modifier = torch.cat([is_category[:, :-1] & is_category[:, 1:], torch.zeros_like(is_category[:, :1])], 1)
        is_category = is_category & ~modifier
        order = torch.cumsum(is_category.long(), dim=1) * is_category  # 1 = subject, 2 = object
        subject = _pick(labels, order == 1)
        obj = _pick(labels, order == 2)
        named = is_category.any(1)
        words = self.glove[(tokens - 2).clamp(min=0)] * ((tokens >= 2) & mask).unsqueeze(-1)
        content = mask & ~(tokens[..., None] == self.stopword_ids).any(-1)
        subject = torch.where(named[:, None], subject, self._zero_shot(words, content))
        subject_plural = (plural & (order == 1)).any(1)
        count_hits = (tokens[..., None] == self.count_ids) & mask[..., None]
        count = (count_hits.long() * self.count_values).sum((1, 2))
        asked = count_hits.any((1, 2))
        count = torch.where(asked, count, torch.where(subject_plural, torch.zeros_like(count), torch.ones_like(count)))
        colour_hits = ((tokens[..., None] == self.colour_ids) & mask[..., None]).float() @ self.colour_rows
        colours = colour_hits.sum(1).clamp(max=1.0)
        colours = colours / colours.sum(-1, keepdim=True).clamp(min=1.0)
        return ParsedExpression(subject, obj, named, count, colours, words, mask)

    def _zero_shot(self, words: Tensor, mask: Tensor) -> Tensor:
        similarity = torch.einsum("bte,le->btl", F.normalize(words, dim=-1), self.label_vectors)
        similarity = similarity.masked_fill(~mask[..., None], -1.0).max(1).values
        return (_ZERO_SHOT_SCALE * similarity).softmax(-1)  # no content word: uniform


def _label_rows(label_sets: list[frozenset[int]], n_labels: int) -> Tensor:
    """Each word's labels as a row summing to 1 [W, L]."""
    rows = torch.zeros(len(label_sets), n_labels)
    for row, labels in zip(rows, label_sets):
        row[sorted(labels)] = 1.0 / len(labels)
    return rows


def _pick(labels: Tensor, where: Tensor) -> Tensor:
    """The label row at the (at most one) marked position of each expression, zeros if none."""
    return (labels * where[..., None]).sum(1)
