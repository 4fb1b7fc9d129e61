"""The model contract (docs/architecture.md), checked once for every registered model at a tiny size:
tokenize, forward on a Batch, cached features, determinism, config and checkpoint round trips,
ONNX export or a one-line refusal. Model-specific behaviour is tested in each model's own file."""
from __future__ import annotations

import json

import pytest
import torch

from refseg.engine.checkpoint import load_model, save_model
from refseg.errors import RefsegError
from refseg.models import Batch, create_model, list_models

VOCAB = ["the", "red", "circle", "left", "blue", "square"]
#: Small constructor options per model (a model not listed is built with its defaults).
TINY = {
    "lstm_cnn": dict(vocab=VOCAB, hidden=8, classifier=8),
    "lstm_cnn_plus": dict(vocab=VOCAB, hidden=8, classifier=8, category_hidden=8),
    "per_word": dict(words=VOCAB, hidden=8),
    "rmi": dict(vocab=VOCAB, pretrained=False, hidden=8, visual_dim=8, mlstm_hidden=8),
    "rmi_baseline": dict(vocab=VOCAB, pretrained=False, hidden=8, visual_dim=8, classifier=8),
    "step": dict(vocab=VOCAB, pretrained=False, hidden=8, visual_dim=8, attention_dim=8, embed_space_dim=8, gru_hidden=8),
}
NAMES = [name for name in list_models() if not name.startswith("_")]  # "_test_*": fixtures of other tests
TEXTS = ["the red circle on the left", "", "blue"]
SIZE = 64


def tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(name, **TINY.get(name, {})).eval()


@pytest.fixture(scope="module", params=NAMES)
def model(request):
    return tiny(request.param)


def batch_for(model, texts=TEXTS) -> Batch:
    tokens, lengths = model.tokenize(texts)
    images = torch.randn(len(texts), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return Batch(images=images, tokens=tokens, lengths=lengths, texts=list(texts))


def logits(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).logits


def test_tokenize_gives_ids_and_lengths(model):
    tokens, lengths = model.tokenize(TEXTS)
    assert tokens.dtype == lengths.dtype == torch.long
    assert tokens.shape == (len(TEXTS), int(lengths.max())) and bool((lengths >= 1).all())  # "" reads as one token


def test_forward_on_a_batch_gives_square_logits_per_text(model):
    with torch.no_grad():
        out = model(batch_for(model))
    assert out.logits.ndim == 4 and out.logits.shape[:2] == (len(TEXTS), 1)
    assert out.logits.shape[2] == out.logits.shape[3] and bool(torch.isfinite(out.logits).all())
    assert isinstance(out.extras, dict)


def test_cached_backbone_features_give_the_same_logits(model):
    batch = batch_for(model)
    with torch.no_grad():
        cached = Batch(images=None, tokens=batch.tokens, lengths=batch.lengths, texts=batch.texts,
                       features=model.encode_image(batch.images))
    torch.testing.assert_close(logits(model, cached), logits(model, batch))


def test_same_seed_same_model_another_seed_another(model):
    again, other = tiny(model.name), tiny(model.name, seed=1)
    torch.testing.assert_close(logits(again, batch_for(again)), logits(model, batch_for(model)), rtol=0, atol=0)
    if any(p.requires_grad for p in model.parameters()):
        assert not torch.allclose(logits(other, batch_for(other)), logits(model, batch_for(model)))


def test_config_rebuilds_the_model(model):
    config = json.loads(json.dumps(model.config))  # JSON-serialisable, as checkpoints store it
    rebuilt = create_model(model.name, **config).eval()
    excluded = tuple(model.checkpoint_exclude())
    state = {k: v for k, v in model.state_dict().items() if not excluded or not k.startswith(excluded)}
    rebuilt.load_state_dict(state, strict=not excluded)
    torch.testing.assert_close(logits(rebuilt, batch_for(rebuilt)), logits(model, batch_for(model)))


def test_checkpoint_round_trip_leaves_the_excluded_parts_out(model, tmp_path):
    from safetensors import safe_open

    path = save_model(tmp_path / f"{model.name}.safetensors", model, {"image_size": SIZE})
    excluded = tuple(model.checkpoint_exclude())
    with safe_open(str(path), framework="pt") as f:
        assert not excluded or not any(k.startswith(excluded) for k in f.keys())
    loaded, meta = load_model(path)
    assert loaded.name == model.name and meta == {"image_size": SIZE}
    torch.testing.assert_close(logits(loaded.eval(), batch_for(loaded)), logits(model, batch_for(model)), atol=1e-5, rtol=0)


def test_onnx_export_matches_torch_or_is_refused_in_one_line(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from refseg.export.onnx import export_onnx

    target = tmp_path / f"{model.name}.onnx"
    if model.onnx_unsupported:
        with pytest.raises(RefsegError, match="cannot be exported to ONNX") as refused:
            export_onnx(model, target, image_size=48)
        assert "\n" not in str(refused.value) and not target.exists()
        return
    result = export_onnx(model, target, image_size=48)
    assert result.path.exists() and result.max_probability_diff <= 2.5e-5 and result.max_extras_diff <= 1e-4
