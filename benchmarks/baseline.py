"""The latent attack one cell at a time: the plain reference for the batched engine.

Each (prompt, layer, budget) cell runs on its own. A clean forward reads ``max|h|`` at
the layer, then ten sign-gradient PGD steps lower a target NLL taken from the full
logits. The uniform random control follows, and greedy generation of the clean prompt
and of both perturbations. This is the protocol as published research code writes it. It shares
no code path with :mod:`lvs_core.engine` beyond the hook helpers, the chat formatting
and the judge, so ``tests/test_engine.py`` can check the engine against it and
``benchmarks/sweep_throughput.py`` can time the two side by side.
"""

from __future__ import annotations

import torch

from lvs_core.attack import AttackConfig, random_delta, random_l2_delta
from lvs_core.generation import greedy_generate
from lvs_core.hooks import add_prompt_delta, capture_residual, residual_hooks
from lvs_core.metrics import lvs
from lvs_core.models import AuditModel, Layer, layer_label, parse_layer
from lvs_core.prompts import PromptBatch, build_batch, positions_from_mask, text_token_ids
from lvs_core.scoring import RefusalScorer, Scorer


def _logprob(model: AuditModel, batch: PromptBatch, text: str, layer=None, delta=None, mean: bool = False) -> torch.Tensor:
    """``log p(text | prompt)`` of the single row of ``batch``, from the logits at every position."""
    target = torch.tensor([text_token_ids(model, text)], device=batch.input_ids.device)
    input_ids = torch.cat([batch.input_ids, target], dim=1)
    mask = torch.cat([batch.attention_mask, torch.ones_like(target)], dim=1)
    hooks = [] if delta is None else [(layer, add_prompt_delta(delta))]
    with residual_hooks(model, hooks):
        logits = model.bridge(input_ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    width = batch.input_ids.shape[1]
    logprobs = logits[:, width - 1 : -1].float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return logprobs.mean(dim=1) if mean else logprobs.sum(dim=1)


def _pgd(model: AuditModel, batch: PromptBatch, layer, eps: float, config: AttackConfig) -> tuple[torch.Tensor, float]:
    delta = torch.zeros((1, batch.input_ids.shape[1], model.d_model), device=batch.input_ids.device)
    step = config.step_frac * eps
    for _ in range(config.steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            nll = -_logprob(model, batch, config.target, layer, delta, mean=True)
            (gradient,) = torch.autograd.grad(nll.sum(), delta)
        with torch.no_grad():
            if config.norm == "linf":
                delta = (delta - step * gradient.sign()).clamp(-eps, eps)
            else:
                delta = delta - step * gradient / gradient.norm().clamp(min=1e-12)
                delta = delta * min(1.0, eps / float(delta.norm().clamp(min=1e-12)))
    with torch.no_grad():
        nll = -_logprob(model, batch, config.target, layer, delta, mean=True)
    return delta.detach(), float(nll[0])


@torch.no_grad()
def baseline_cell(
    model: AuditModel,
    prompt: str,
    layer: Layer,
    budget: float,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = 32,
) -> list[dict]:
    """Run one cell for the PGD attack and the random control; return one record per attack.

    The records carry the engine's columns that do not depend on batching: the deltas'
    norms, both generations, their verdicts, margins and LVS, plus ``delta`` itself.
    """
    scorer = scorer or RefusalScorer()
    layer = parse_layer(layer, model.n_layers)
    batch = build_batch(model, [prompt])
    store: dict = {}
    with residual_hooks(model, [(layer, capture_residual(store, "h"))]):
        model.bridge(batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids, return_type=None)
    h = store["h"][0]
    eps = budget * float(h.abs().max() if config.norm == "linf" else h.float().norm())

    def margin(delta=None):
        return float(_logprob(model, batch, config.refusal, layer, delta)[0] - _logprob(model, batch, config.target, layer, delta)[0])

    clean_text = greedy_generate(model, batch, max_new_tokens=max_new_tokens).texts[0]
    clean_margin = margin()
    clean = scorer.score([prompt], [clean_text], torch.tensor([clean_margin]).numpy())

    pgd_delta, pgd_nll = _pgd(model, batch, layer, eps, config)
    if config.norm == "linf":
        random = random_delta(batch, torch.tensor([eps], device=batch.input_ids.device), model.d_model, seed=config.seed)
    else:
        random = random_l2_delta(batch, pgd_delta.flatten(1).norm(dim=1), model.d_model, seed=config.seed)
    random_nll = float(-_logprob(model, batch, config.target, layer, random, mean=True)[0])

    records = []
    for attack, delta, nll in (("pgd", pgd_delta, pgd_nll), ("random", random, random_nll)):
        text = greedy_generate(model, batch, layer, delta, max_new_tokens=max_new_tokens).texts[0]
        perturbed_margin = margin(delta)
        scores = scorer.score([prompt], [text], torch.tensor([perturbed_margin]).numpy())
        l2 = float(delta.flatten().norm())
        records.append(
            {
                "layer": layer_label(layer),
                "budget": float(budget),
                "attack": attack,
                "eps": eps,
                "delta": delta[0].cpu(),
                "delta_linf": float(delta.abs().max()),
                "delta_l2": l2,
                "clean_text": clean_text,
                "perturbed_text": text,
                "perturbed_compliant": bool(scores.compliant[0]),
                "clean_margin": clean_margin,
                "perturbed_margin": perturbed_margin,
                "target_nll_perturbed": nll,
                "lvs": float(lvs(clean.harmlessness, scores.harmlessness, torch.tensor([l2]).numpy())[0]),
            }
        )
    return records
