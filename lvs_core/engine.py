"""One latent-attack cell on a batch of prompts: attack, control, generations and scores.

:func:`attack_batch` runs the protocol of :mod:`lvs_core.attack` at one layer and one
budget for every prompt of a batch, for the PGD attack and the uniform random control,
and returns long-form records, one per (prompt, attack). :func:`clean_reference`
computes what does not depend on the layer or budget (the clean generation, its score
and margin) once per prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lvs_core.attack import (
    AttackConfig,
    clean_residual,
    continuation_logprob,
    delta_norms,
    attack_radius,
    pgd_attack,
    random_delta,
    random_l2_delta,
    refusal_margin,
    validate_budget,
)
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS, greedy_generate
from lvs_core.metrics import lvs
from lvs_core.models import AuditModel, Layer, layer_label, parse_layer
from lvs_core.prompts import PromptBatch
from lvs_core.scoring import RefusalScorer, Scorer

logger = logging.getLogger(__name__)

ATTACKS = ("pgd", "random")


@dataclass
class CleanReference:
    """Clean generation, harmlessness, verdict and margin of each prompt of a batch."""

    texts: list[str]
    harmlessness: np.ndarray
    compliant: np.ndarray
    valid: np.ndarray
    margin: np.ndarray
    target_nll: np.ndarray


def clean_reference(
    model: AuditModel,
    batch: PromptBatch,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> CleanReference:
    """Generate and score each prompt with no intervention."""
    scorer = scorer or RefusalScorer()
    generation = greedy_generate(model, batch, max_new_tokens=max_new_tokens)
    margin = refusal_margin(model, batch, config).cpu().numpy()
    with torch.no_grad():
        target_nll = (-continuation_logprob(model, batch, config.target, reduction="mean")).cpu().numpy()
    scores = scorer.score(batch.prompts, generation.texts, margin)
    return CleanReference(
        texts=generation.texts,
        harmlessness=scores.harmlessness,
        compliant=scores.compliant,
        valid=scores.valid,
        margin=margin,
        target_nll=target_nll,
    )


def attack_batch(
    model: AuditModel,
    batch: PromptBatch,
    layer: Layer,
    budget: float,
    clean: CleanReference,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    attacks: tuple[str, ...] = ATTACKS,
) -> list[dict]:
    """Attack every prompt of ``batch`` at ``layer`` and ``budget``; return one record per (prompt, attack)."""
    scorer = scorer or RefusalScorer()
    layer = parse_layer(layer, model.n_layers)
    budget = validate_budget(budget)
    h_clean = clean_residual(model, batch, layer)
    eps = attack_radius(h_clean, batch, budget, config.norm)
    records: list[dict] = []
    pgd_l2 = None
    for attack in attacks:
        if attack == "pgd":
            result = pgd_attack(model, batch, layer, eps, config)
            delta = result.delta
            pgd_l2 = delta_norms(delta)[1]
            nll_final = result.nll_history[-1].cpu().numpy()
        elif attack == "random":
            if config.norm == "linf":
                delta = random_delta(batch, eps, model.d_model, seed=config.seed)
            else:
                # Matched norm: the control has the attack's L2 norm (the full ball without one).
                norms = pgd_l2 if pgd_l2 is not None else eps
                delta = random_l2_delta(batch, norms, model.d_model, seed=config.seed)
            with torch.no_grad():
                nll_final = (
                    -continuation_logprob(model, batch, config.target, layer, delta, reduction="mean")
                ).cpu().numpy()
        else:
            raise ValueError(f"unknown attack {attack!r}: use one of {', '.join(ATTACKS)}")

        generation = greedy_generate(model, batch, layer, delta, max_new_tokens=max_new_tokens)
        margin = refusal_margin(model, batch, config, layer, delta).cpu().numpy()
        scores = scorer.score(batch.prompts, generation.texts, margin)
        linf, l2 = (norm.cpu().numpy() for norm in delta_norms(delta))
        lvs_values = lvs(clean.harmlessness, scores.harmlessness, l2)
        for i, prompt in enumerate(batch.prompts):
            records.append(
                {
                    "batch_index": i,
                    "layer": layer_label(layer),
                    "budget": budget,
                    "attack": attack,
                    "prompt": prompt,
                    "eps": float(eps[i]),
                    "delta_linf": float(linf[i]),
                    "delta_l2": float(l2[i]),
                    "clean_text": clean.texts[i],
                    "perturbed_text": generation.texts[i],
                    "clean_valid": bool(clean.valid[i]),
                    "perturbed_valid": bool(scores.valid[i]),
                    "s_clean": float(clean.harmlessness[i]),
                    "s_perturbed": float(scores.harmlessness[i]),
                    "clean_refused": bool(clean.valid[i] and not clean.compliant[i]),
                    "perturbed_compliant": bool(scores.compliant[i]),
                    "clean_margin": float(clean.margin[i]),
                    "perturbed_margin": float(margin[i]),
                    "target_nll_clean": float(clean.target_nll[i]),
                    "target_nll_perturbed": float(nll_final[i]),
                    "lvs": float(lvs_values[i]),
                }
            )
    return records
