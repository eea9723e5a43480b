"""Greedy generation, optionally under a prompt delta at one layer.

The delta acts on the prompt positions only. With the KV cache (the default) the prompt
is prefilled under the delta hook and every decode step runs with no hook, so the
perturbation reaches later tokens only through the cached keys and values. Without the
cache each step reruns the whole sequence with the delta on the prompt positions, which
gives the same tokens and serves as the reference. Generation of a row stops at the
model's end-of-turn token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lvs_core.hooks import add_prompt_delta, residual_hooks
from lvs_core.models import AuditModel, Layer
from lvs_core.prompts import PromptBatch, positions_from_mask

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 32


@dataclass
class Generation:
    """Greedy continuations of a batch: new token ids (without the end-of-turn token) and text."""

    token_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]


def _forward(model: AuditModel, input_ids, attention_mask, position_ids, past_key_values=None):
    return model.bridge(
        input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=True,
        return_type="logits_and_cache",
    )


@torch.no_grad()
def greedy_generate(
    model: AuditModel,
    batch: PromptBatch,
    layer: Layer | None = None,
    delta: torch.Tensor | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    use_cache: bool = True,
    prompt_hooks: list | None = None,
) -> Generation:
    """Generate greedily from each prompt, under ``delta`` at ``layer`` when given.

    ``prompt_hooks`` are further ``(layer, hook)`` pairs that act on the prompt positions
    only, the first ``pos`` positions of the activation, as the delta hook does.
    """
    batch_size = len(batch)
    eos = torch.tensor(model.eos_token_ids or [-1], device=batch.input_ids.device)
    hooks = [] if delta is None else [(layer, add_prompt_delta(delta))]
    hooks += list(prompt_hooks or [])
    input_ids = batch.input_ids
    attention_mask = batch.attention_mask
    new_tokens = torch.empty((batch_size, 0), dtype=torch.long, device=input_ids.device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=input_ids.device)

    if use_cache:
        with residual_hooks(model, hooks):
            logits, cache = _forward(model, input_ids, attention_mask, positions_from_mask(attention_mask))
    for step in range(max_new_tokens):
        if not use_cache:
            full_ids = torch.cat([input_ids, new_tokens], dim=1)
            full_mask = torch.cat([attention_mask, torch.ones_like(new_tokens)], dim=1)
            with residual_hooks(model, hooks):
                logits = model.bridge(full_ids, attention_mask=full_mask, position_ids=positions_from_mask(full_mask))
        next_token = logits[:, -1].argmax(dim=-1)

        # A finished row keeps emitting end-of-turn tokens; they are dropped when decoding.
        next_token = torch.where(finished, eos[0].clamp(min=0), next_token)
        finished = finished | torch.isin(next_token, eos)
        new_tokens = torch.cat([new_tokens, next_token.unsqueeze(1)], dim=1)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        if use_cache:
            full_mask = torch.cat([attention_mask, torch.ones_like(new_tokens)], dim=1)
            positions = positions_from_mask(full_mask)[:, -1:]
            logits, cache = _forward(model, next_token.unsqueeze(1), full_mask, positions, cache)

    token_ids = []
    texts = []
    eos_set = set(model.eos_token_ids)
    for row in new_tokens.tolist():
        kept = []
        for token in row:
            if token in eos_set:
                break
            kept.append(token)
        token_ids.append(kept)
        texts.append(model.tokenizer.decode(kept, skip_special_tokens=True))
    return Generation(token_ids=token_ids, texts=texts, finished=finished.tolist())
