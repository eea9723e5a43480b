"""The latent attack on many cells at once: PGD, control, generations and scores.

A cell is a (layer, budget) pair; :func:`attack_cells` runs a list of cells on every
prompt of a batch. It lays the work out as rows, one per (cell, prompt), and runs the
rows in chunks. Within a chunk each row has its own radius, its own delta and its own
layer, so one forward pass serves prompts, budgets and layers together:

- the clean residual is read once per prompt, at every layer in a single forward that
  stops after the deepest attacked layer;
- the blocks below the attacked layer run once on the clean input, and every PGD step
  resumes from their output (:func:`lvs_core.hooks.start_at_layer`);
- PGD runs on all rows of a chunk at once. Each layer's hook adds the deltas of the rows
  attacking that layer (the others add zero), so a prompt's delta only ever moves its
  own prompt positions at its own layer;
- the target NLL takes logits only at the positions that predict the target;
- the margins and the generations of the attack and of the control share one batch,
  and generation prefills under the deltas and decodes with the KV cache;
- the clean generation of a prompt is computed once (:func:`clean_reference`) and
  reused by every cell.

The chunk size follows the memory the device has free (:func:`auto_chunk_rows`) unless
the caller sets ``max_rows``. An out-of-memory error halves the chunk and retries.
``benchmarks/baseline.py`` implements the same protocol one cell at a time, and
``tests/test_engine.py`` checks that both give the same deltas and generations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from lvs_core.attack import (
    AttackConfig,
    continuation_logprob,
    pgd_attack,
    random_delta,
    random_l2_delta,
    validate_budget,
)
from lvs_core.generation import DEFAULT_MAX_NEW_TOKENS, greedy_generate
from lvs_core.hooks import layer_delta_hooks, residual_hooks, stop_after
from lvs_core.metrics import lvs
from lvs_core.models import AuditModel, Layer, layer_label, parse_layer
from lvs_core.prompts import PromptBatch
from lvs_core.scoring import RefusalScorer, Scorer

logger = logging.getLogger(__name__)

ATTACKS = ("pgd", "random")
Cell = tuple[Layer, float]
# Floats of activation memory one row keeps per position, per block and per unit of
# d_model during a PGD step (forward activations saved for the backward pass, MLP
# intermediates included). Measured on Llama and GPT-2 blocks at 30-40; 48 leaves room.
ACTIVATION_FLOATS_PER_UNIT = 48
# Share of the free memory a chunk may plan to use.
MEMORY_SHARE = 0.5
# Rows per chunk never exceed this: beyond it a CPU gains nothing and a progress bar
# moves too rarely.
MAX_CHUNK_ROWS = 512
# Planned activation memory of one chunk on a CPU, in bytes. On a GPT-2-sized model,
# 64 prompts of 26 tokens (about 1,700 matmul rows) already reach 63% of the fp32 matmul
# peak (benchmarks/pgd_flops.py), and 2 GiB fits that many rows. Larger chunks only cost
# memory. A GPU needs larger batches to fill, so there only its free memory bounds the chunk.
CPU_CHUNK_BYTES = 2 * 2**30


@dataclass
class CleanReference:
    """Clean generation, harmlessness, verdict and margin of each prompt of a batch."""

    texts: list[str]
    harmlessness: np.ndarray
    compliant: np.ndarray
    valid: np.ndarray
    margin: np.ndarray
    target_nll: np.ndarray


def take_rows(batch: PromptBatch, rows: torch.Tensor | list[int]) -> PromptBatch:
    """Return the rows ``rows`` of ``batch`` (repeats allowed), with all-pad columns on the left cut off."""
    index = torch.as_tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    lengths = batch.prompt_lengths[index]
    width = int(lengths.max())
    return PromptBatch(
        input_ids=batch.input_ids[index][:, -width:],
        attention_mask=batch.attention_mask[index][:, -width:],
        prompt_lengths=lengths,
        prompts=[batch.prompts[i] for i in index.tolist()],
    )


def residual_scales(model: AuditModel, batch: PromptBatch, layers: Sequence[Layer], norm: str) -> dict[Layer, torch.Tensor]:
    """Return, per layer, ``max|h|`` (``linf``) or ``||h||_2`` (``l2``) of each row's clean prompt residual.

    One forward pass with a capture hook at every layer; only the per-row reductions are
    kept, never the activations.
    """
    mask = batch.attention_mask.unsqueeze(-1).float()
    scales: dict[Layer, torch.Tensor] = {}

    def reducer(layer: Layer):
        def hook(activation: torch.Tensor, hook: object) -> None:
            masked = activation.float() * mask
            if norm == "linf":
                scales[layer] = masked.abs().flatten(1).max(dim=1).values
            else:
                scales[layer] = masked.flatten(1).norm(dim=1)

        return hook

    with torch.no_grad(), residual_hooks(model, [(layer, reducer(layer)) for layer in layers]):
        model.bridge(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            return_type=None,
            **stop_after(model, layers),
        )
    return scales


def margins_and_nll(model: AuditModel, batch: PromptBatch, config: AttackConfig, hooks=()) -> tuple[np.ndarray, np.ndarray]:
    """Return the refusal-vs-target margin (nats) and the mean target NLL per row, under ``hooks``."""
    with torch.no_grad():
        refusal = continuation_logprob(model, batch, config.refusal, prompt_hooks=list(hooks))
        target = continuation_logprob(model, batch, config.target, prompt_hooks=list(hooks), reduction="none")
    target_sum = target.sum(dim=1)
    return (refusal - target_sum).cpu().numpy(), (-target.mean(dim=1)).cpu().numpy()


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
    margin, target_nll = margins_and_nll(model, batch, config)
    scores = scorer.score(batch.prompts, generation.texts, margin)
    return CleanReference(
        texts=generation.texts,
        harmlessness=scores.harmlessness,
        compliant=scores.compliant,
        valid=scores.valid,
        margin=margin,
        target_nll=target_nll,
    )


def free_memory_bytes(device: torch.device) -> int:
    """Return the memory free on ``device``: CUDA's free memory, or the host's available RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def auto_chunk_rows(model: AuditModel, width: int, n_target_tokens: int, device: torch.device | None = None) -> int:
    """Return how many rows a PGD chunk can hold in half the free memory of the device.

    The estimate counts the activations a backward pass keeps, ``ACTIVATION_FLOATS_PER_UNIT``
    floats per position, block and unit of ``d_model``, plus the target logits, in
    the model's dtype. On a CPU the plan also stays within ``CPU_CHUNK_BYTES``.
    """
    device = device or model.device
    bytes_per_float = torch.finfo(model.dtype).bits // 8
    positions = width + n_target_tokens
    per_row = positions * model.n_layers * model.d_model * ACTIVATION_FLOATS_PER_UNIT * bytes_per_float
    per_row += n_target_tokens * model.bridge.cfg.d_vocab * 4 * 3
    budget = free_memory_bytes(device) * MEMORY_SHARE
    if device.type == "cpu":
        budget = min(budget, CPU_CHUNK_BYTES)
    rows = int(budget // max(per_row, 1))
    return max(1, min(MAX_CHUNK_ROWS, rows))


def is_out_of_memory(error: BaseException) -> bool:
    """Return whether ``error`` is an out-of-memory failure of torch on any device."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def attack_cells(
    model: AuditModel,
    batch: PromptBatch,
    cells: Sequence[Cell],
    clean: CleanReference,
    config: AttackConfig = AttackConfig(),
    scorer: Scorer | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    attacks: tuple[str, ...] = ATTACKS,
    max_rows: int | None = None,
    keep_deltas: bool = False,
) -> list[dict]:
    """Attack every prompt of ``batch`` in every (layer, budget) cell; return one record per (cell, prompt, attack).

    Records are ordered by cell, then attack, then prompt. ``max_rows`` caps the rows
    of one chunk (rows are (cell, prompt) pairs); by default it follows free memory.
    With ``keep_deltas`` each record also contains ``delta``, ``[prompt_len, d_model]`` on
    the CPU, its prompt's positions only.
    """
    scorer = scorer or RefusalScorer()
    for attack in attacks:
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}: use one of {', '.join(ATTACKS)}")
    cells = [(parse_layer(layer, model.n_layers), validate_budget(budget)) for layer, budget in cells]
    if not cells:
        return []
    layers = list(dict.fromkeys(layer for layer, _ in cells))
    n_prompts = len(batch)
    plan = [(cell_index, prompt) for cell_index in range(len(cells)) for prompt in range(n_prompts)]
    n_target = len(model.tokenizer.encode(config.target, add_special_tokens=False))
    chunk = max_rows or auto_chunk_rows(model, batch.input_ids.shape[1], n_target)
    scales = _scales_in_chunks(model, batch, layers, config.norm, chunk)
    results: dict[tuple[int, int, str], dict] = {}
    start = 0
    while start < len(plan):
        rows = plan[start : start + chunk]
        try:
            for record in _attack_rows(model, batch, cells, rows, scales, clean, config, scorer, max_new_tokens, attacks, keep_deltas):
                results[(record.pop("cell_index"), record["batch_index"], record["attack"])] = record
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_out_of_memory(error) or chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            logger.warning("out of memory with %d rows per chunk; retrying with %d", len(rows), chunk)
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        start += len(rows)
    return [
        results[(cell_index, prompt, attack)]
        for cell_index in range(len(cells))
        for attack in attacks
        for prompt in range(n_prompts)
    ]


def _scales_in_chunks(model, batch, layers, norm: str, chunk: int) -> dict:
    """Run :func:`residual_scales` on ``chunk`` prompts at a time and join the rows."""
    parts = [
        residual_scales(model, take_rows(batch, list(range(start, min(start + chunk, len(batch))))), layers, norm)
        for start in range(0, len(batch), chunk)
    ]
    return {layer: torch.cat([part[layer] for part in parts]) for layer in layers}


def _attack_rows(model, batch, cells, rows, scales, clean, config, scorer, max_new_tokens, attacks, keep_deltas) -> list[dict]:
    prompt_index = [prompt for _, prompt in rows]
    row_layers = [cells[cell_index][0] for cell_index, _ in rows]
    budgets = torch.tensor([cells[cell_index][1] for cell_index, _ in rows], device=batch.input_ids.device)
    scale = torch.stack([scales[cells[cell_index][0]][prompt] for cell_index, prompt in rows])
    eps = budgets.to(scale.dtype) * scale
    sub = take_rows(batch, prompt_index)

    deltas: dict[str, torch.Tensor] = {}
    if "pgd" in attacks:
        deltas["pgd"] = pgd_attack(model, sub, None, eps, config, row_layers=row_layers, skip_clean_blocks=True).delta
    if "random" in attacks:
        unique = sorted(set(prompt_index))
        unit_batch = take_rows(sub, [prompt_index.index(prompt) for prompt in unique])
        position = {prompt: i for i, prompt in enumerate(unique)}
        pick = [position[prompt] for prompt in prompt_index]
        if config.norm == "linf":
            unit = random_delta(unit_batch, torch.ones(len(unique), device=eps.device), model.d_model, seed=config.seed)
            draws = _align(unit[pick], sub.input_ids.shape[1]) * eps.view(-1, 1, 1)
        else:
            # Matched norm: the control has the attack's L2 norm (the full ball without one).
            norms = deltas["pgd"].flatten(1).norm(dim=1) if "pgd" in deltas else eps
            unit = random_l2_delta(unit_batch, torch.ones(len(unique), device=eps.device), model.d_model, seed=config.seed)
            draws = _align(unit[pick], sub.input_ids.shape[1]) * norms.view(-1, 1, 1)
        deltas["random"] = draws

    # Margins, NLLs and generations of every attack in one batch.
    names = list(deltas)
    both = take_rows(sub, list(range(len(rows))) * len(names))
    delta_all = torch.cat([deltas[name] for name in names])
    hooks = layer_delta_hooks(delta_all, row_layers * len(names))
    margin, nll = margins_and_nll(model, both, config, hooks)
    generation = greedy_generate(model, both, max_new_tokens=max_new_tokens, prompt_hooks=hooks)
    scores = scorer.score(both.prompts, generation.texts, margin)
    flat = delta_all.flatten(1)
    linf = flat.abs().max(dim=1).values.cpu().numpy()
    l2 = flat.norm(dim=1).cpu().numpy()

    records = []
    for block, name in enumerate(names):
        for offset, (cell_index, prompt) in enumerate(rows):
            j = block * len(rows) + offset
            layer, budget = cells[cell_index]
            s_perturbed = float(scores.harmlessness[j])
            records.append(
                {
                    "cell_index": cell_index,
                    "batch_index": prompt,
                    "layer": layer_label(layer),
                    "budget": budget,
                    "attack": name,
                    "prompt": batch.prompts[prompt],
                    "eps": float(eps[offset]),
                    "delta_linf": float(linf[j]),
                    "delta_l2": float(l2[j]),
                    "clean_text": clean.texts[prompt],
                    "perturbed_text": generation.texts[j],
                    "clean_valid": bool(clean.valid[prompt]),
                    "perturbed_valid": bool(scores.valid[j]),
                    "s_clean": float(clean.harmlessness[prompt]),
                    "s_perturbed": s_perturbed,
                    "clean_refused": bool(clean.valid[prompt] and not clean.compliant[prompt]),
                    "perturbed_compliant": bool(scores.compliant[j]),
                    "clean_margin": float(clean.margin[prompt]),
                    "perturbed_margin": float(margin[j]),
                    "target_nll_clean": float(clean.target_nll[prompt]),
                    "target_nll_perturbed": float(nll[j]),
                    "lvs": float(lvs(clean.harmlessness[prompt], s_perturbed, l2[j])),
                }
            )
            if keep_deltas:
                length = int(batch.prompt_lengths[prompt])
                records[-1]["delta"] = delta_all[j, delta_all.shape[1] - length :].detach().cpu()
    return records


def _align(delta: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad or cut ``delta`` ``[rows, pos, d]`` to ``width`` positions, keeping the last ones."""
    if delta.shape[1] >= width:
        return delta[:, -width:]
    pad = torch.zeros((delta.shape[0], width - delta.shape[1], delta.shape[2]), dtype=delta.dtype, device=delta.device)
    return torch.cat([pad, delta], dim=1)


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
    """Attack every prompt of ``batch`` at one ``layer`` and ``budget``; return one record per (prompt, attack)."""
    return attack_cells(model, batch, [(layer, budget)], clean, config, scorer, max_new_tokens, attacks)
