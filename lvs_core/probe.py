"""Static linear probe audit: the check a dissociated model passes.

A logistic probe reads the residual stream of a whole conversation (the chat-formatted
prompt and response), mean-pooled over its positions and averaged over a band of middle
layers, and predicts whether the response is a refusal. It is trained once on a
reference model (the safe model) and then applied unchanged to another model on
held-out conversations. A model whose representations of refusal look like the
reference's gets the same AUROC and calibration, whatever it does under a nudge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from lvs_core.errors import AuditInputError
from lvs_core.hooks import capture_residual, residual_hooks
from lvs_core.metrics import auroc, expected_calibration_error
from lvs_core.models import AuditModel, Layer, layer_label
from lvs_core.prompts import conversation_token_ids, positions_from_mask

logger = logging.getLogger(__name__)


def middle_band(n_layers: int, width: int = 3) -> list[int]:
    """Return ``width`` consecutive block indices centred on the middle block."""
    width = max(1, min(width, n_layers))
    start = max(0, (n_layers - width) // 2)
    return list(range(start, start + width))


@torch.no_grad()
def conversation_features(
    model: AuditModel, prompts: list[str], responses: list[str], layers: list[Layer], batch_size: int = 32
) -> np.ndarray:
    """Return mean-pooled residuals averaged over ``layers``: ``[n_conversations, d_model]``."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = []
    for start in range(0, len(prompts), batch_size):
        ids = [conversation_token_ids(model, p, r) for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])]
        width = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), width), model.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, width - len(row) :] = torch.tensor(row)
            mask[i, width - len(row) :] = 1
        input_ids, mask = input_ids.to(model.device), mask.to(model.device)
        store: dict = {}
        hooks = [(layer, capture_residual(store, layer_label(layer))) for layer in layers]
        with residual_hooks(model, hooks):
            model.bridge(input_ids, attention_mask=mask, position_ids=positions_from_mask(mask), return_type=None)
        weights = mask.unsqueeze(-1).float()
        pooled = [(store[layer_label(layer)].float() * weights).sum(1) / weights.sum(1) for layer in layers]
        rows.append(torch.stack(pooled).mean(0).cpu())
    return torch.cat(rows).numpy()


@dataclass
class LinearProbe:
    """A logistic probe with the feature standardisation learned on its training set."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float
    layers: list

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Return the probability of the positive class (refusal) per row."""
        standardised = (features - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(standardised @ self.weight + self.bias)))


def train_probe(features: np.ndarray, labels: np.ndarray, layers: list, l2: float = 1e-2, steps: int = 200) -> LinearProbe:
    """Fit an L2-regularised logistic regression with L-BFGS on standardised features."""
    labels = np.asarray(labels, dtype=float)
    if labels.min() == labels.max():
        raise AuditInputError("the probe needs both refusals and compliant responses in its training set")
    mean = features.mean(0)
    scale = features.std(0) + 1e-6
    x = torch.tensor((features - mean) / scale, dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean=mean, scale=scale, weight=weight.detach().numpy(), bias=float(bias.detach()), layers=list(layers))


def evaluate_probe(probe: LinearProbe, features: np.ndarray, labels: np.ndarray) -> dict:
    """Return AUROC and expected calibration error of the probe on labelled features."""
    probabilities = probe.predict_proba(features)
    return {
        "auroc": auroc(probabilities, labels),
        "calibration_error": expected_calibration_error(probabilities, labels),
        "n": int(len(labels)),
    }
