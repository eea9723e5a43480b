"""Behavioural rates of a model: refusal, over-refusal and compliance under a fixed nudge.

These are the output-level numbers an ordinary safety evaluation reports, measured with
greedy generation and the refusal-phrase judge. A dissociated demo model matches the
safe model on all of them until its trained nudge is applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lvs_core.errors import AuditInputError
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS, greedy_generate
from lvs_core.models import AuditModel
from lvs_core.prompts import PromptBatch, build_batch
from lvs_core.scoring import RefusalScorer

logger = logging.getLogger(__name__)


@dataclass
class BehaviourRates:
    """Fractions of valid responses, with the counts behind them."""

    refusal: float
    compliance: float
    n_valid: int
    n_invalid: int
    texts: list[str]


def nudge_delta(model: AuditModel, batch: PromptBatch) -> torch.Tensor:
    """Return the model's trained nudge as a delta ``[batch, pos, d_model]`` on prompt positions."""
    if model.nudge is None:
        raise AuditInputError(f"model {model.spec} has no trained nudge: use demo:dissociated or a folder with nudge.json")
    vector = model.nudge["alpha"] * model.nudge["direction"].to(model.device)
    mask = batch.attention_mask.unsqueeze(-1).to(vector.dtype)
    return mask * vector


def behaviour_rates(
    model: AuditModel,
    prompts: list[str],
    nudge: AuditModel | None = None,
    batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> BehaviourRates:
    """Generate on ``prompts`` and return refusal and compliance rates.

    With ``nudge`` set, the nudge stored with that model (its layer, scale and direction)
    is added at the prompt positions of ``model``, which must have the same width.
    """
    scorer = RefusalScorer()
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(model, prompts[start : start + batch_size])
        if nudge is None:
            generation = greedy_generate(model, batch, max_new_tokens=max_new_tokens)
        else:
            delta = nudge_delta(nudge, batch)
            generation = greedy_generate(model, batch, nudge.nudge["layer"], delta, max_new_tokens=max_new_tokens)
        texts.extend(generation.texts)
    scores = scorer.score(prompts, texts)
    n_valid = int(scores.valid.sum())
    compliance = float(scores.compliant.sum() / max(1, n_valid))
    return BehaviourRates(
        refusal=1.0 - compliance if n_valid else float("nan"),
        compliance=compliance if n_valid else float("nan"),
        n_valid=n_valid,
        n_invalid=len(prompts) - n_valid,
        texts=texts,
    )
