"""Tokenizer, vocabulary, GloVe and the text encoders."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

from refseg.errors import ConfigError
from refseg.models import text as T
from refseg.models.text_encoders import MiniLMTextEncoder, RecurrentTextEncoder, build_text_encoder

VOCAB = ["left", "man", "zebra", "red", "shirt", "on", "the"]


def test_split_words_handles_case_punctuation_and_scripts() -> None:
    assert T.split_words("The man's LEFT-hand, café!") == ["the", "man", "s", "left", "hand", "café"]
    assert T.split_words("日本語 🙂 ...") == ["日本語"]
    assert T.split_words("") == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_any_text_tokenizes_to_at_least_one_token(texts: list[str]) -> None:
    ids, lengths = T.encode(texts, T.Vocab(VOCAB).lookup, max_len=5)
    assert ids.shape[0] == len(texts) and ids.dtype == torch.long
    assert bool((lengths >= 1).all()) and bool((lengths <= 5).all())
    assert ids.shape[1] == int(lengths.max())
    for row, n in zip(ids, lengths):
        assert bool((row[:n] >= 1).all()) and bool((row[n:] == T.PAD_ID).all())


def test_truncation_is_logged_once(caplog) -> None:
    T._warned_truncation = False
    with caplog.at_level(logging.INFO, logger="refseg.models.text"):
        ids, lengths = T.encode(["a " * 30, "b " * 40], lambda w: 2, max_len=20)
    assert lengths.tolist() == [20, 20]
    assert sum("truncated" in r.message for r in caplog.records) == 1
    # below WARNING: the CLI user sees only Segmenter.predict's one "warning: ..." line
    assert all(r.levelno < logging.WARNING for r in caplog.records)


def test_vocab_ids_and_round_trip() -> None:
    vocab = T.Vocab.build(["the red man", "the man on the left", "zebra"], max_size=3)
    assert vocab.words[:2] == [T.PAD, T.UNK] and vocab.words[2:] == ["the", "man", "left"]
    assert vocab.lookup("zebra") == T.UNK_ID
    assert T.Vocab(vocab.to_list()).words == vocab.words
    with pytest.raises(ConfigError):
        T.Vocab(["a", "a"])
    assert T.most_frequent_words(["the red man", "a red zebra"], 2) == ["red", "man"]


def test_glove_vectors_carry_meaning() -> None:
    vectors, found = T.glove_matrix(["king", "man", "woman", "queen", "banana", "qqzzxxnotaword"])
    assert vectors.shape == (6, 50) and found.tolist() == [True] * 5 + [False]
    analogy = vectors[0] - vectors[1] + vectors[2]
    sims = F.cosine_similarity(analogy[None], vectors[3:5])
    assert sims[0] > sims[1]  # king - man + woman is nearer queen than banana
    assert T.glove_words()[0] == "the" and len(T.glove_words()) == 400000


def test_lstm_sentence_vector_ignores_padding() -> None:
    torch.manual_seed(0)
    encoder = RecurrentTextEncoder(VOCAB, hidden=16)
    alone = encoder(*encoder.tokenize(["the red man"]))
    batched = encoder(*encoder.tokenize(["the red man", "the man on the left in the red shirt"]))
    torch.testing.assert_close(batched.sentence[0], alone.sentence[0])
    torch.testing.assert_close(batched.words[0, :3], alone.words[0])
    assert bool((batched.words[0, 3:] == 0).all()) and batched.mask[0].tolist() == [True] * 3 + [False] * 6


def test_bilstm_matches_torch_packed_bidirectional_lstm() -> None:
    torch.manual_seed(0)
    encoder = RecurrentTextEncoder(VOCAB, hidden=8, bidirectional=True)
    reference = torch.nn.LSTM(encoder.embed_dim, 8, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(reference, name).copy_(getattr(encoder.lstm, name))
            getattr(reference, name + "_reverse").copy_(getattr(encoder.lstm_backward, name))
    tokens, lengths = encoder.tokenize(["the red man on the left", "zebra", "man on the left"])
    out = encoder(tokens, lengths)
    packed = pack_padded_sequence(encoder.embed_tokens(tokens), lengths, batch_first=True, enforce_sorted=False)
    states, (h_n, _) = reference(packed)
    states, _ = torch.nn.utils.rnn.pad_packed_sequence(states, batch_first=True)
    torch.testing.assert_close(out.words, states)
    torch.testing.assert_close(out.sentence, torch.cat([h_n[0], h_n[1]], dim=-1))
    assert encoder.dim == 16


def test_glove_embeddings_frozen_when_asked() -> None:
    frozen = RecurrentTextEncoder(VOCAB, embedding="glove", freeze_embedding=True, hidden=8)
    glove, _ = T.glove_matrix(["zebra"])
    torch.testing.assert_close(frozen.embed.weight[frozen.vocab.lookup("zebra")], glove[0])
    assert not frozen.embed.weight.requires_grad
    trainable = RecurrentTextEncoder(VOCAB, embedding="glove", freeze_embedding=False, hidden=8)
    trainable(*trainable.tokenize(["the red zebra"])).sentence.sum().backward()
    assert trainable.embed.weight.grad is not None and trainable.lstm.weight_ih_l0.grad is not None


def test_full_glove_knows_unseen_words_and_is_not_saved() -> None:
    encoder = build_text_encoder("lstm", embedding="glove_full", hidden=8)
    assert not any(k.startswith("glove") for k in encoder.state_dict())
    tokens, lengths = encoder.tokenize(["the okapi", "qqzzxxnotaword"])
    features = encoder(tokens, lengths)
    okapi, _ = T.glove_matrix(["okapi"])
    torch.testing.assert_close(features.embeddings[0, 1], okapi[0])
    assert bool((features.embeddings[1, 0] == 0).all())  # <unk>
    names = encoder.encode_phrases(["zebra", "traffic light", "pizza"])
    scores = encoder.zero_shot_scores(encoder(*encoder.tokenize(["a zebra on the left"])), names)
    assert scores.argmax().item() == 0


def test_learned_embeddings_have_no_zero_shot_space() -> None:
    encoder = build_text_encoder("lstm", vocab=VOCAB, hidden=8)
    assert not encoder.supports_zero_shot
    with pytest.raises(ConfigError):
        encoder.encode_phrases(["zebra"])
    with pytest.raises(ConfigError):
        build_text_encoder("gru")


def test_default_vocab_is_frequent_glove_words() -> None:
    encoder = build_text_encoder("lstm", hidden=8)
    assert encoder.vocab is not None and encoder.vocab.lookup("man") > T.UNK_ID


def test_first_words_cuts_after_the_nth_word_as_split_words_counts() -> None:
    assert T.first_words("The man's LEFT-hand, café!", 3) == "The man's"
    assert T.first_words("  two words  ", 5) == "  two words  "
    assert T.split_words(T.first_words("a b c d e f", 4)) == ["a", "b", "c", "d"]


def test_minilm_reads_only_the_first_max_len_words() -> None:
    pytest.importorskip("transformers", reason="extra 'minilm' not installed")
    encoder = build_text_encoder("minilm", max_len=3)
    assert encoder.max_len == 3
    cut, full = encoder.tokenize(["one two three four five"]), encoder.tokenize(["one two three"])
    assert torch.equal(cut[0], full[0]) and torch.equal(cut[1], full[1])


def test_minilm_encoder_is_frozen_and_excluded() -> None:
    pytest.importorskip("transformers", reason="extra 'minilm' not installed")
    encoder = build_text_encoder("minilm")
    assert isinstance(encoder, MiniLMTextEncoder)
    tokens, lengths = encoder.tokenize(["a striped zebra grazing", ""])
    features = encoder(tokens, lengths)
    assert features.words.shape == (2, tokens.shape[1], 384) and features.sentence.shape == (2, 384)
    assert bool((lengths >= 1).all())
    encoder.train()
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.checkpoint_exclude() == ["model."]
    names = encoder.encode_phrases(["zebra", "traffic light", "pizza"])
    assert encoder.zero_shot_scores(features, names)[0].argmax().item() == 0
