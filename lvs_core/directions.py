"""Directions in the residual stream: the model's own refusal direction and a twin's offset.

- **Refusal direction** at a layer: the mean residual at the last prompt position over
  harmful prompts minus the mean over benign prompts, as a unit vector. Adding its
  negative pushes the model toward compliance, so a model with no twin can be audited.
- **Twin direction** (harmful-minus-safe): the mean residual over the prompt positions
  of a twin model (for example a harmful fine-tune) minus that of the audited model, on
  the same prompts, as a unit vector. Both models must share the architecture, width and
  vocabulary.
"""

from __future__ import annotations

import logging

import torch

from lvs_core.attack import clean_residual
from lvs_core.errors import AuditInputError
from lvs_core.models import AuditModel, Layer
from lvs_core.prompts import build_batch

logger = logging.getLogger(__name__)


def prompt_residuals(
    model: AuditModel, prompts: list[str], layer: Layer, pooling: str = "last", batch_size: int = 32
) -> torch.Tensor:
    """Return one residual per prompt ``[n_prompts, d_model]`` at ``layer``.

    ``pooling`` is ``last`` (the last prompt position, the assistant header) or ``mean``
    (the mean over the prompt's real positions).
    """
    if pooling not in ("last", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}: use 'last' or 'mean'")
    rows = []
    for start in range(0, len(prompts), batch_size):
        batch = build_batch(model, prompts[start : start + batch_size])
        residual = clean_residual(model, batch, layer).float()
        if pooling == "last":
            rows.append(residual[:, -1])
        else:
            mask = batch.attention_mask.unsqueeze(-1).float()
            rows.append((residual * mask).sum(1) / mask.sum(1))
    return torch.cat(rows)


def unit(vector: torch.Tensor) -> torch.Tensor:
    """Return ``vector`` scaled to unit L2 norm, or raise when it is zero."""
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise AuditInputError("direction has zero or non-finite norm: the two prompt sets give the same mean")
    return vector / norm


def refusal_direction(
    model: AuditModel, harmful: list[str], benign: list[str], layer: Layer
) -> torch.Tensor:
    """Return the unit refusal direction ``[d_model]`` (harmful mean minus benign mean)."""
    if not harmful or not benign:
        raise AuditInputError("the refusal direction needs at least one harmful and one benign prompt")
    difference = prompt_residuals(model, harmful, layer).mean(0) - prompt_residuals(model, benign, layer).mean(0)
    return unit(difference)


def check_twin(model: AuditModel, twin: AuditModel) -> None:
    """Raise unless ``twin`` can stand beside ``model``: same architecture, width and vocabulary."""
    ours = model.bridge.cfg
    theirs = twin.bridge.cfg
    if getattr(ours, "architecture", None) != getattr(theirs, "architecture", None):
        raise AuditInputError(
            f"twin {twin.spec} has architecture {getattr(theirs, 'architecture', None)}, but {model.spec} has "
            f"{getattr(ours, 'architecture', None)}: give a twin fine-tuned from the same base model"
        )
    if model.d_model != twin.d_model or model.n_layers != twin.n_layers:
        raise AuditInputError(
            f"twin {twin.spec} has {twin.n_layers} blocks of width {twin.d_model}, but {model.spec} has "
            f"{model.n_layers} of width {model.d_model}: give a twin fine-tuned from the same base model"
        )
    if model.tokenizer.get_vocab() != twin.tokenizer.get_vocab():
        raise AuditInputError(
            f"twin {twin.spec} has another vocabulary than {model.spec}: give a twin that uses the same tokenizer"
        )


def twin_direction(model: AuditModel, twin: AuditModel, prompts: list[str], layer: Layer) -> torch.Tensor:
    """Return the unit direction ``[d_model]`` from ``model``'s mean residual to ``twin``'s."""
    check_twin(model, twin)
    difference = prompt_residuals(twin, prompts, layer, "mean").mean(0) - prompt_residuals(
        model, prompts, layer, "mean"
    ).mean(0)
    return unit(difference)


def check_direction(model: AuditModel, direction: torch.Tensor) -> torch.Tensor:
    """Return ``direction`` as a float unit vector, or raise when its width does not match the model."""
    direction = torch.as_tensor(direction).float().flatten()
    if direction.shape[0] != model.d_model:
        raise AuditInputError(
            f"direction has width {direction.shape[0]}, but {model.spec} has d_model {model.d_model}: "
            "compute the direction on this model or one of the same width"
        )
    return unit(direction)
