"""Loading, layer naming and chat formatting on tiny checkpoints of four architectures."""

from __future__ import annotations

import pytest
import torch

from lvs_core.errors import AuditInputError
from lvs_core.hooks import count_attached_hooks
from lvs_core.models import load_model, parse_layer, parse_layers, resolve_model_path
from lvs_core.prompts import build_batch, chat_token_ids


def test_layers_match_run_with_cache(arch_model):
    model = arch_model
    batch = build_batch(model, ["hello world"])
    _, cache = model.bridge.run_with_cache(batch.input_ids)
    from lvs_core.attack import clean_residual

    embedding = clean_residual(model, batch, "embedding")
    assert torch.equal(embedding, cache["blocks.0.hook_resid_pre"])
    for block in range(model.n_layers):
        residual = clean_residual(model, batch, block)
        assert torch.equal(residual, cache[f"blocks.{block}.hook_resid_post"]), block
    assert count_attached_hooks(model) == 0


def test_blocks_match_hf_hidden_states(arch_model):
    # HF hidden_states[l + 1] is the residual after block l, except the last one,
    # which has the final norm applied.
    model = arch_model
    batch = build_batch(model, ["tell me a story"])
    from lvs_core.attack import clean_residual

    with torch.no_grad():
        hidden = model.bridge.original_model(batch.input_ids, output_hidden_states=True).hidden_states
    assert torch.allclose(clean_residual(model, batch, "embedding"), hidden[0], atol=1e-5)
    for block in range(model.n_layers - 1):
        assert torch.allclose(clean_residual(model, batch, block), hidden[block + 1], atol=1e-5), block


def test_chat_ids_equal_template(arch_model):
    model = arch_model
    tokenizer = model.tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    kwargs = {"chat_template": model.chat_template} if model.chat_template else {}
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    if hasattr(expected, "keys"):
        expected = expected["input_ids"]
    ids = chat_token_ids(model, "What is the capital of France?")
    assert ids == list(expected)
    assert ids.count(tokenizer.bos_token_id) == 1
    batch = build_batch(model, ["What is the capital of France?", "hi"])
    assert batch.input_ids[0].tolist() == ids


def test_model_without_template_rejected(checkpoint_root):
    from checkpoints import make_checkpoint

    folder = make_checkpoint(checkpoint_root / "no-template", "gpt2", chat_template=None)
    with pytest.raises(AuditInputError, match="no chat template"):
        load_model(str(folder))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("demo:unknown", "unknown demo model"),
        ("./no/such/folder", "not found"),
        ("/tmp", "no config.json"),
        ("a/b/c/d", "invalid model"),
    ],
)
def test_bad_model_spec(spec, message):
    with pytest.raises(AuditInputError, match=message):
        resolve_model_path(spec)


def test_uncached_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(AuditInputError, match="is not in the local HuggingFace cache"):
        load_model("lvs-audit-tests/not-a-cached-model")


@pytest.mark.parametrize("layer", [-1, 3, 99, "12", "middle", 1.5, True])
def test_layer_out_of_range(layer):
    with pytest.raises(AuditInputError):
        parse_layer(layer, 3)


def test_parse_layers():
    assert parse_layers("all", 3) == ["embedding", 0, 1, 2]
    assert parse_layers("2,embedding,0,2", 3) == ["embedding", 0, 2]
    with pytest.raises(AuditInputError, match="out of range"):
        parse_layers("0,7", 3)
