"""Residual-stream hooks that are always removed.

Every hook goes through :func:`residual_hooks`. It resolves layers to bridge hook names
and rejects a name the bridge does not have, listing the closest valid ones. On every
exit path, an exception or a ``KeyboardInterrupt`` included, it removes exactly the
hooks it added.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from lvs_core.errors import AuditInputError
from lvs_core.models import AuditModel, Layer

HookFn = Callable[[torch.Tensor, object], torch.Tensor | None]


def check_hook_name(model: AuditModel, name: str) -> None:
    """Raise when ``name`` is not a hook point of the bridge."""
    names = list(model.bridge.hook_dict.keys())
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        raise AuditInputError(
            f"hook {name!r} does not exist on {model.spec}: closest are {', '.join(close) or 'none'}"
        )


@contextmanager
def residual_hooks(model: AuditModel, hooks: list[tuple[Layer, HookFn]]) -> Iterator[None]:
    """Attach forward hooks on residual layers for the duration of the block."""
    named = []
    for layer, fn in hooks:
        name = model.hook_name(layer)
        check_hook_name(model, name)
        named.append((name, fn))
    with model.bridge.hooks(fwd_hooks=named):
        yield


def count_attached_hooks(model: AuditModel) -> int:
    """Return how many forward and backward hooks are attached to the bridge's hook points."""
    total = 0
    for hook_point in model.bridge.hook_dict.values():
        total += len(hook_point._forward_hooks) + len(hook_point._backward_hooks)
    return total


def add_prompt_delta(delta: torch.Tensor) -> HookFn:
    """Build a hook that adds ``delta`` ``[batch, prompt_pos, d_model]`` to the first positions.

    The activation may be longer than the delta (a forward over prompt plus continuation);
    positions past the prompt are left unchanged. A decode step of one token under a KV
    cache is shorter than the prompt and must not run under this hook.
    """
    prompt_width = delta.shape[1]

    def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
        if activation.shape[1] < prompt_width:
            raise RuntimeError(
                f"delta hook got {activation.shape[1]} positions, fewer than the prompt's "
                f"{prompt_width}: a decode step ran under a prompt delta"
            )
        perturbed = activation[:, :prompt_width] + delta.to(activation.dtype)
        return torch.cat([perturbed, activation[:, prompt_width:]], dim=1)

    return hook


def capture_residual(store: dict, key: str) -> HookFn:
    """Build a hook that stores the activation under ``store[key]`` and leaves it unchanged."""

    def hook(activation: torch.Tensor, hook: object) -> None:
        store[key] = activation

    return hook


def layer_delta_hooks(delta: torch.Tensor, row_layers: Sequence[Layer]) -> list[tuple[Layer, HookFn]]:
    """Return prompt hooks that add row ``i`` of ``delta`` at ``row_layers[i]`` only.

    With one layer for all rows this is a single hook. Otherwise each layer's hook adds
    the delta times a 0/1 row mask, so gradients still reach every row.
    """
    distinct = list(dict.fromkeys(row_layers))
    if len(distinct) == 1:
        return [(distinct[0], add_prompt_delta(delta))]
    hooks = []
    for layer in distinct:
        mask = torch.tensor([row == layer for row in row_layers], dtype=delta.dtype, device=delta.device)
        hooks.append((layer, add_prompt_delta(delta * mask.view(-1, 1, 1))))
    return hooks


def _identity(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


@contextmanager
def start_at_layer(model: AuditModel, layer: Layer, residual: torch.Tensor) -> Iterator[list[tuple[Layer, HookFn]]]:
    """Skip blocks ``0..layer`` and resume the forward from the clean ``residual`` after block ``layer``.

    Inside the block, the HuggingFace layers up to ``layer`` run as identities, and the
    returned hook, which must come first in the hook list, replaces the output of block
    ``layer`` with ``residual`` (``[batch, pos, d_model]``, the clean activation of the
    whole input). Hooks after it (a delta) then act as usual, and gradients never
    needed the skipped blocks. For the embedding layer nothing is skipped. The identity
    returns the hidden states as a bare tensor, as the decoder layers of transformers 5
    do (Llama, Qwen2, Gemma2 and GPT-2 among them).
    """
    if layer == "embedding":
        yield []
        return
    patched = []
    try:
        for index in range(int(layer) + 1):
            module = model.bridge.blocks[index].original_component
            module.forward = _identity
            patched.append(module)

        def replace(activation: torch.Tensor, hook: object) -> torch.Tensor:
            if activation.shape != residual.shape:
                raise RuntimeError(
                    f"start_at_layer residual has shape {tuple(residual.shape)}, the activation {tuple(activation.shape)}"
                )
            return residual.to(activation.dtype)

        yield [(layer, replace)]
    finally:
        for module in patched:
            del module.forward


def stop_after(model: AuditModel, layers: Sequence[Layer]) -> dict:
    """Return the forward arguments that stop a pass after the deepest of ``layers``.

    A pass that only captures residuals needs neither the blocks above the deepest one nor
    the unembedding, whose logits over a large vocabulary can outweigh everything else.
    """
    blocks = [int(layer) for layer in layers if layer != "embedding"]
    deepest = max(blocks) if blocks else -1
    return {"stop_at_layer": deepest + 1} if deepest + 1 < model.n_layers else {}
