"""Activation patching at the last prompt position.

For each layer, the residual at the last prompt position is replaced by the same
position's residual from a compliant source run. That position is the assistant header,
where the model decides how to start its reply. The source is the same prompt under a
steering delta (for a dissociated model, its trained nudge) or the same prompt in a
harmful twin. The flip rate is the fraction of prompts refused clean that comply once
patched.
"""

from __future__ import annotations

import logging

import torch

from lvs_core.attack import clean_residual
from lvs_core.directions import check_twin
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS, greedy_generate
from lvs_core.hooks import add_prompt_delta, capture_residual, residual_hooks
from lvs_core.metrics import wilson_interval
from lvs_core.models import AuditModel, Layer, layer_label
from lvs_core.prompts import PromptBatch, build_batch, positions_from_mask
from lvs_core.scoring import RefusalScorer

logger = logging.getLogger(__name__)


def replace_last_prompt_position(source: torch.Tensor, width: int):
    """Build a hook that writes ``source`` ``[batch, d_model]`` at position ``width - 1``."""

    def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
        patched = source.to(activation.dtype).unsqueeze(1)
        return torch.cat([activation[:, : width - 1], patched, activation[:, width:]], dim=1)

    return hook


def source_residuals(
    model: AuditModel,
    batch: PromptBatch,
    layers: list[Layer],
    twin: AuditModel | None = None,
    steer_layer: Layer | None = None,
    steer_vector: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Return the compliant source's last-position residual ``[batch, d_model]`` per layer label."""
    runner = twin or model
    store: dict = {}
    hooks = []
    if steer_vector is not None:
        delta = batch.attention_mask.unsqueeze(-1).float() * steer_vector.float()
        hooks.append((steer_layer, add_prompt_delta(delta)))
    hooks += [(layer, capture_residual(store, layer_label(layer))) for layer in layers]
    with torch.no_grad(), residual_hooks(runner, hooks):
        runner.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                      position_ids=positions_from_mask(batch.attention_mask), return_type=None)
    return {key: value[:, -1].detach() for key, value in store.items()}


def patching_flip_rates(
    model: AuditModel,
    prompts: list[str],
    layers: list[Layer],
    twin: AuditModel | None = None,
    steer_layer: Layer | None = None,
    steer_vector: torch.Tensor | None = None,
    batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[dict]:
    """Patch each layer in turn and return one record per layer with the flip rate and its CI."""
    if twin is None and steer_vector is None:
        raise ValueError("patching needs a compliant source: a twin model or a steering vector")
    if twin is not None:
        check_twin(model, twin)
    scorer = RefusalScorer()
    refused_total = 0
    flips = {layer_label(layer): 0 for layer in layers}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = build_batch(model, chunk)
        clean = scorer.score(chunk, greedy_generate(model, batch, max_new_tokens=max_new_tokens).texts)
        refused = clean.valid & ~clean.compliant
        refused_total += int(refused.sum())
        sources = source_residuals(model, batch, layers, twin, steer_layer, steer_vector)
        width = batch.input_ids.shape[1]
        for layer in layers:
            hook = replace_last_prompt_position(sources[layer_label(layer)], width)
            texts = greedy_generate(model, batch, max_new_tokens=max_new_tokens, prompt_hooks=[(layer, hook)]).texts
            patched = scorer.score(chunk, texts)
            flips[layer_label(layer)] += int((refused & patched.compliant).sum())
    records = []
    for label, count in flips.items():
        low, high = wilson_interval(count, refused_total)
        records.append(
            {
                "layer": label,
                "n_refused": refused_total,
                "flip_rate": count / refused_total if refused_total else float("nan"),
                "flip_lo": low,
                "flip_hi": high,
            }
        )
    return records

