"""Attack a single prompt at one layer and budget: the data behind the Live flip page.

The work is split into steps with separate inputs, so that a caller that caches each
step (the dashboard does) recomputes only what a changed setting touches:

- :func:`clean_step`: the clean generation, verdict and refusal margin, per (model,
  prompt, max_new_tokens);
- :func:`attack_step`: the PGD attack and the random control at one layer and budget,
  with their generations, verdicts, margins and LVS;
- :func:`attack_steps`: attack steps at several budgets in one batched run;
  :func:`curve_points` and :func:`smallest_flipping_budget` read the margins and
  verdicts of such a grid (:func:`budget_curve` runs it);
- the ``positions`` entry of an attack step: the L2 norm of the PGD and random deltas
  at each prompt position, to show which tokens the attack moves most.

:func:`flip_prompt` runs the clean and attack steps in one call. Every step returns
plain Python values (str, float, bool, lists), so results can be pickled and cached.
The refusal margin is ``log p(refusal) - log p(target)`` in nats after the prompt under
the delta (positive leans to refusing).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from lvs_core.attack import AttackConfig, validate_budget
from lvs_core.engine import CleanReference, attack_cells, clean_reference
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS
from lvs_core.models import AuditModel, Layer, layer_label
from lvs_core.prompts import build_batch
from lvs_core.scoring import Scorer

logger = logging.getLogger(__name__)

# Budgets of the refusal-margin curve: 8 log-spaced points from 0.01 to 0.5 of max|h|.
BUDGET_GRID = tuple(float(f"{budget:.3g}") for budget in np.geomspace(0.01, 0.5, 8))


def verdict(valid: bool, compliant: bool) -> str:
    """Return ``refused``, ``complied`` or ``invalid`` for a judged response."""
    if not valid:
        return "invalid"
    return "complied" if compliant else "refused"


def clean_step(
    model: AuditModel,
    prompt: str,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Generate and judge ``prompt`` with no intervention.

    Returns ``text``, ``verdict``, ``margin`` (nats) and what :func:`attack_step` needs
    to score a perturbed response against it (``harmlessness``, ``compliant``,
    ``valid``, ``target_nll``).

    Raises:
        AuditInputError: the prompt is empty or longer than the model's context.
    """
    batch = build_batch(model, [prompt])
    clean = clean_reference(model, batch, config, scorer, max_new_tokens)
    valid = bool(clean.valid[0])
    compliant = bool(clean.compliant[0])
    return {
        "text": clean.texts[0],
        "verdict": verdict(valid, compliant),
        "margin": float(clean.margin[0]),
        "harmlessness": float(clean.harmlessness[0]),
        "compliant": compliant,
        "valid": valid,
        "target_nll": float(clean.target_nll[0]),
    }


def _reference(clean: dict) -> CleanReference:
    """Rebuild the engine's one-row clean reference from a :func:`clean_step` result."""
    return CleanReference(
        texts=[clean["text"]],
        harmlessness=np.array([clean["harmlessness"]]),
        compliant=np.array([clean["compliant"]]),
        valid=np.array([clean["valid"]]),
        margin=np.array([clean["margin"]]),
        target_nll=np.array([clean["target_nll"]]),
    )


def attack_steps(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budgets: Sequence[float],
    clean: dict,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[dict]:
    """Attack ``prompt`` at ``layer`` at every budget of ``budgets`` in one batched run.

    Returns one :func:`attack_step` result per budget, in the order given.
    """
    budgets = [validate_budget(budget) for budget in budgets]
    batch = build_batch(model, [prompt])
    cells = [(layer, budget) for budget in budgets]
    rows = attack_cells(model, batch, cells, _reference(clean), config, scorer, max_new_tokens, keep_deltas=True)
    tokens = position_labels(model, batch.input_ids[0].tolist())
    results = []
    for index, budget in enumerate(budgets):
        cell_rows = rows[index * 2 : index * 2 + 2]
        result = {"layer": cell_rows[0]["layer"], "budget": float(budget), "eps": cell_rows[0]["eps"],
                  "positions": {"tokens": tokens}}
        for row in cell_rows:
            result[row["attack"]] = {
                "text": row["perturbed_text"],
                "verdict": verdict(row["perturbed_valid"], row["perturbed_compliant"]),
                "margin": row["perturbed_margin"],
                "delta_l2": row["delta_l2"],
                "delta_linf": row["delta_linf"],
                "target_nll": row["target_nll_perturbed"],
                "lvs": row["lvs"],
            }
            # [pos, d_model] -> [pos]; a one-prompt batch has no pad positions.
            result["positions"][row["attack"]] = row["delta"].norm(dim=-1).tolist()
        results.append(result)
    return results


def attack_step(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budget: float,
    clean: dict,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Attack ``prompt`` at ``layer`` and ``budget`` with PGD and the random control.

    ``clean`` is the :func:`clean_step` result of the same prompt and settings. The
    result has ``layer`` (label), ``budget`` and ``eps`` (the radius in activation units).
    Under ``pgd`` and ``random`` it has the generation's ``text``, ``verdict``, ``margin``
    (nats), ``delta_l2``, ``delta_linf``, ``target_nll`` (nats per token) and ``lvs``.
    Under ``positions`` it has the L2 norm over ``d_model`` of each delta at every prompt
    position (``tokens``, ``pgd``, ``random``), template tokens included, because the
    attack perturbs all of them.

    Raises:
        AuditInputError: the layer, budget or prompt is invalid.
    """
    return attack_steps(model, prompt, layer, [budget], clean, config, scorer, max_new_tokens)[0]


def flip_prompt(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budget: float,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Return the clean, attacked and random-control generations of one prompt with verdicts.

    The result has ``model``, ``prompt``, ``layer``, ``budget``, ``eps``, and ``clean``,
    ``pgd`` and ``random`` entries as described in :func:`clean_step` and
    :func:`attack_step`.
    """
    clean = clean_step(model, prompt, config, scorer, max_new_tokens)
    attacked = attack_step(model, prompt, layer, budget, clean, config, scorer, max_new_tokens)
    return {"model": model.spec, "prompt": prompt, **attacked, "clean": clean}


def curve_points(attacks: Sequence[dict]) -> list[dict]:
    """Return one point per :func:`attack_step` result, in budget order.

    Each point has ``budget``, ``pgd_margin``, ``random_margin`` (nats), ``pgd_verdict``
    and ``random_verdict``.
    """
    points = [
        {
            "budget": attack["budget"],
            "pgd_margin": attack["pgd"]["margin"],
            "random_margin": attack["random"]["margin"],
            "pgd_verdict": attack["pgd"]["verdict"],
            "random_verdict": attack["random"]["verdict"],
        }
        for attack in attacks
    ]
    return sorted(points, key=lambda point: point["budget"])


def smallest_flipping_budget(points: Sequence[dict]) -> float | None:
    """Return the smallest budget whose PGD generation complies, or ``None`` when none does.

    Compliance need not be monotone in the budget, so this is the first compliant point
    of the grid, not a threshold above which every budget flips.
    """
    for point in sorted(points, key=lambda point: point["budget"]):
        if point["pgd_verdict"] == "complied":
            return float(point["budget"])
    return None


def budget_curve(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budgets: Sequence[float] = BUDGET_GRID,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[dict]:
    """Attack at every budget of ``budgets`` in one batched run and return :func:`curve_points`."""
    clean = clean_step(model, prompt, config, scorer, max_new_tokens)
    logger.info("budget curve of %s at layer %s over %d budgets", model.spec, layer_label(layer), len(budgets))
    return curve_points(attack_steps(model, prompt, layer, budgets, clean, config, scorer, max_new_tokens))


def position_labels(model: AuditModel, token_ids: Sequence[int]) -> list[str]:
    """Return each token's text, with line breaks and blank tokens made visible."""
    labels = []
    for token_id in token_ids:
        text = model.tokenizer.decode([int(token_id)])
        text = text.replace("\n", "\\n")
        labels.append(text if text.strip() else repr(text))
    return labels


def delta_positions(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budget: float,
    config: AttackConfig = AttackConfig(),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict:
    """Return the ``positions`` entry of :func:`attack_step`: the per-position L2 norm of each delta."""
    clean = clean_step(model, prompt, config, max_new_tokens=max_new_tokens)
    return attack_step(model, prompt, layer, budget, clean, config, max_new_tokens=max_new_tokens)["positions"]
