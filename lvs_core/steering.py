"""Steering: add a fixed vector at one layer and record judged compliance.

The vector is ``frac * mean_norm * u`` with ``u`` a unit direction and ``mean_norm`` the
mean L2 norm of the clean residual over the prompt positions at that layer. It is added
at every prompt position, like the latent attack, and decode steps are not steered.
Each fraction is paired with a control along a random unit direction of the same norm.
"""

from __future__ import annotations

import logging

import torch

from lvs_core.attack import clean_residual
from lvs_core.directions import check_direction
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS, greedy_generate
from lvs_core.metrics import wilson_interval
from lvs_core.models import AuditModel, Layer, layer_label
from lvs_core.prompts import build_batch
from lvs_core.scoring import RefusalScorer, Scorer

logger = logging.getLogger(__name__)


def mean_residual_norm(model: AuditModel, prompts: list[str], layer: Layer, batch_size: int = 32) -> float:
    """Return the mean L2 norm of the clean residual over all prompt positions at ``layer``."""
    total = 0.0
    count = 0
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(model, prompts[start : start + batch_size])
        norms = clean_residual(model, batch, layer).float().norm(dim=-1)
        mask = batch.attention_mask.bool()
        total += float(norms[mask].sum())
        count += int(mask.sum())
    return total / max(1, count)


def random_unit(d_model: int, seed: int) -> torch.Tensor:
    """Return a seeded random unit vector ``[d_model]``."""
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(d_model, generator=generator)
    return vector / vector.norm()


def steered_texts(
    model: AuditModel,
    prompts: list[str],
    layer: Layer,
    vector: torch.Tensor,
    batch_size: int = 32,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[str]:
    """Generate greedily with ``vector`` ``[d_model]`` added at every prompt position of ``layer``."""
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(model, prompts[start : start + batch_size])
        mask = batch.attention_mask.unsqueeze(-1).to(torch.float32)
        delta = mask * vector.to(model.device, torch.float32)
        texts.extend(greedy_generate(model, batch, layer, delta, max_new_tokens=max_new_tokens).texts)
    return texts


def steering_sweep(
    model: AuditModel,
    prompts: list[str],
    layer: Layer,
    direction: torch.Tensor,
    fracs: tuple[float, ...],
    direction_name: str = "refusal",
    seed: int = 0,
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[dict]:
    """Steer along ``direction`` and along a random direction at each fraction; return one record per cell.

    ``direction`` is the direction toward compliance (for the refusal direction, pass its
    negative).
    """
    scorer = scorer or RefusalScorer()
    direction = check_direction(model, direction)
    control = random_unit(model.d_model, seed)
    norm = mean_residual_norm(model, prompts, layer)
    records = []
    for frac in fracs:
        for kind, unit_vector in ((direction_name, direction), ("random", control)):
            texts = steered_texts(model, prompts, layer, frac * norm * unit_vector, max_new_tokens=max_new_tokens)
            scores = scorer.score(prompts, texts)
            n_valid = int(scores.valid.sum())
            n_compliant = int(scores.compliant.sum())
            low, high = wilson_interval(n_compliant, n_valid)
            records.append(
                {
                    "layer": layer_label(layer),
                    "frac": float(frac),
                    "direction": kind,
                    "steer_norm": float(frac * norm),
                    "n": n_valid,
                    "compliance": n_compliant / n_valid if n_valid else float("nan"),
                    "compliance_lo": low,
                    "compliance_hi": high,
                }
            )
            logger.info("steering %s layer %s frac %g %s: %d/%d compliant", model.spec, layer_label(layer), frac, kind, n_compliant, n_valid)
    return records
