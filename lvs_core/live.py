"""Attack a single prompt at one layer and budget: the data behind the Live flip page."""

from __future__ import annotations

from lvs_core.attack import AttackConfig
from lvs_core.engine import attack_batch, clean_reference
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.models import AuditModel, Layer
from lvs_core.prompts import build_batch
from lvs_core.scoring import Scorer


def verdict(valid: bool, compliant: bool) -> str:
    """Return ``refused``, ``complied`` or ``invalid`` for a judged response."""
    if not valid:
        return "invalid"
    return "complied" if compliant else "refused"


def flip_prompt(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budget: float,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Return the clean, attacked and random-control generations of one prompt with verdicts."""
    batch = build_batch(model, [prompt])
    clean = clean_reference(model, batch, config, scorer, max_new_tokens)
    rows = attack_batch(model, batch, layer, budget, clean, config, scorer, max_new_tokens)
    result = {
        "model": model.spec,
        "prompt": prompt,
        "layer": rows[0]["layer"],
        "budget": float(budget),
        "eps": rows[0]["eps"],
        "clean": {
            "text": clean.texts[0],
            "verdict": verdict(bool(clean.valid[0]), bool(clean.compliant[0])),
            "margin": float(clean.margin[0]),
        },
    }
    for row in rows:
        result[row["attack"]] = {
            "text": row["perturbed_text"],
            "verdict": verdict(row["perturbed_valid"], row["perturbed_compliant"]),
            "margin": row["perturbed_margin"],
            "delta_l2": row["delta_l2"],
            "delta_linf": row["delta_linf"],
            "target_nll": row["target_nll_perturbed"],
            "lvs": row["lvs"],
        }
    return result
