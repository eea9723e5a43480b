"""Load causal LMs as TransformerLens ``TransformerBridge`` models.

A model spec is one of:

- ``demo:safe``, ``demo:dissociated`` or ``demo:harmful``: the embedded demo models in
  ``assets/models/``;
- a path to a local HuggingFace checkpoint folder (``config.json`` plus weights and a
  tokenizer);
- a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``, loaded through the same
  ``TransformerBridge.boot_transformers`` call, which reads the local HuggingFace cache
  when ``HF_HUB_OFFLINE=1`` is set or the hub is unreachable.

Layers are named ``embedding`` (the residual stream entering block 0, after any
embedding scale or positional embedding) and ``0 .. n_layers-1`` (the residual stream
after that block). Pitfall: HuggingFace's ``output_hidden_states[-1]`` has the final
norm applied, so it is not the residual after the last block; the hooks used here are.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from lvs_core.errors import AuditInputError

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODELS_DIR = ASSETS_DIR / "models"
DEMO_MODEL_NAMES = ("safe", "dissociated", "harmful")
EMBEDDING_LAYER = "embedding"

Layer = Union[str, int]


@dataclass
class AuditModel:
    """A loaded model with what an audit needs next to the bridge.

    ``chat_template`` overrides the tokenizer's template when set. ``nudge`` is the
    trained nudge of a dissociated demo model (layer, absolute scale and unit direction),
    or ``None``.
    """

    spec: str
    bridge: Any
    tokenizer: Any
    chat_template: str | None = None
    nudge: dict | None = None
    source_path: str | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # Whether the HuggingFace forward takes ``logits_to_keep``; found on first use.
    logits_to_keep_ok: bool | None = None

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.original_model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.bridge.original_model.parameters()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.bridge.original_model.parameters())

    @property
    def layers(self) -> list[Layer]:
        """Selectable layers, from the embedding output to the last block."""
        return [EMBEDDING_LAYER, *range(self.n_layers)]

    def hook_name(self, layer: Layer) -> str:
        """Return the bridge hook name of the residual stream at ``layer``."""
        layer = parse_layer(layer, self.n_layers)
        if layer == EMBEDDING_LAYER:
            return "blocks.0.hook_in"
        return f"blocks.{layer}.hook_out"

    def short_name(self) -> str:
        return self.spec.removeprefix("demo:") if self.spec.startswith("demo:") else Path(self.spec).name


def parse_layer(layer: Layer, n_layers: int) -> Layer:
    """Validate a layer given as ``embedding``, an int or a digit string."""
    if isinstance(layer, str):
        text = layer.strip().lower()
        if text in (EMBEDDING_LAYER, "embed", "emb"):
            return EMBEDDING_LAYER
        if text.lstrip("-").isdigit():
            layer = int(text)
        else:
            raise AuditInputError(
                f"invalid layer {layer!r}: use 'embedding' or a block index from 0 to {n_layers - 1}"
            )
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise AuditInputError(
            f"invalid layer {layer!r}: use 'embedding' or a block index from 0 to {n_layers - 1}"
        )
    if not 0 <= layer < n_layers:
        raise AuditInputError(
            f"layer {layer} is out of range for a model with {n_layers} blocks: "
            f"use 'embedding' or 0 to {n_layers - 1}"
        )
    return layer


def parse_layers(text: str | list, n_layers: int) -> list[Layer]:
    """Parse ``all``, ``mid`` or a comma list such as ``embedding,0,3`` into layers."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        text = str(text).strip().lower()
        if text == "all":
            return [EMBEDDING_LAYER, *range(n_layers)]
        items = [item for item in text.split(",") if item.strip()]
        if not items:
            raise AuditInputError("empty --layers: use 'all' or a list such as 'embedding,0,3'")
    layers = [parse_layer(item, n_layers) for item in items]
    order = {EMBEDDING_LAYER: -1}
    return sorted(dict.fromkeys(layers), key=lambda value: order.get(value, value))


def layer_label(layer: Layer) -> str:
    """Return the label of a layer used in tables: ``embedding`` or the block index."""
    return EMBEDDING_LAYER if layer == EMBEDDING_LAYER else str(int(layer))


def layer_sort_key(label: str) -> int:
    """Sort key for layer labels: the embedding first, then blocks in order."""
    return -1 if label == EMBEDDING_LAYER else int(label)


def resolve_model_path(spec: str) -> tuple[str, str | None]:
    """Return ``(name_or_path, local_path)`` for a spec, or raise on a bad one.

    A hub id is returned unchanged with ``local_path=None``.
    """
    spec = spec.strip()
    if spec.startswith("demo:"):
        name = spec.removeprefix("demo:")
        if name not in DEMO_MODEL_NAMES:
            raise AuditInputError(
                f"unknown demo model {spec!r}: use one of "
                + ", ".join(f"demo:{n}" for n in DEMO_MODEL_NAMES)
            )
        path = DEMO_MODELS_DIR / name
        if not (path / "config.json").is_file():
            raise AuditInputError(
                f"demo model {spec!r} is missing from {path}: rebuild the zoo with "
                "'lvs-audit build-zoo'"
            )
        return str(path), str(path)

    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec and path.exists()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AuditInputError(
                f"model folder {spec!r} has no config.json: point to a HuggingFace "
                "checkpoint folder (config.json, weights and tokenizer files)"
            )
        return str(path.resolve()), str(path.resolve())
    if looks_like_path or path.suffix in (".json", ".safetensors", ".bin"):
        raise AuditInputError(
            f"model folder {spec!r} not found: give an existing HuggingFace checkpoint "
            "folder, a hub id, or one of demo:safe, demo:dissociated, demo:harmful"
        )
    if spec.count("/") > 1 or not spec or " " in spec:
        raise AuditInputError(
            f"invalid model {spec!r}: give a hub id such as 'org/name', a local folder, "
            "or one of demo:safe, demo:dissociated, demo:harmful"
        )
    return spec, None


def _eos_token_ids(bridge: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    generation_config = getattr(bridge.original_model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if value is None:
            continue
        ids.extend(value if isinstance(value, (list, tuple)) else [value])
    return tuple(dict.fromkeys(int(i) for i in ids))


def _load_nudge(local_path: str | None, d_model: int) -> dict | None:
    if local_path is None:
        return None
    nudge_file = Path(local_path) / "nudge.json"
    if not nudge_file.is_file():
        return None
    import json

    from safetensors.torch import load_file

    meta = json.loads(nudge_file.read_text())
    direction = load_file(str(Path(local_path) / meta["direction_file"]))["direction"].float()
    if direction.shape != (d_model,):
        raise AuditInputError(
            f"nudge direction in {nudge_file} has shape {tuple(direction.shape)}, expected "
            f"({d_model},): rebuild the model with 'lvs-audit build-zoo'"
        )
    return {**meta, "direction": direction}


def load_model(
    spec: str,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
) -> AuditModel:
    """Load ``spec`` as a ``TransformerBridge`` in eval mode with gradients off.

    Raises:
        AuditInputError: the spec names no demo model, folder or loadable hub id, or the
            tokenizer has no chat template and none was given.
    """
    from transformer_lens.model_bridge import TransformerBridge

    name_or_path, local_path = resolve_model_path(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    logger.info("loading %s from %s on %s", spec, name_or_path, device)
    try:
        bridge = TransformerBridge.boot_transformers(name_or_path, device=device, dtype=dtype)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AuditInputError(
            f"could not load model {spec!r} ({first_line}): check the hub id, or download it "
            "into the HuggingFace cache first, or give a local folder"
        ) from error
    bridge.eval()
    for parameter in bridge.original_model.parameters():
        parameter.requires_grad_(False)

    tokenizer = bridge.tokenizer
    if tokenizer is None:
        raise AuditInputError(f"model {spec!r} has no tokenizer: add tokenizer files to the folder")
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise AuditInputError(
            f"model {spec!r} has no chat template: pass chat_template= (CLI: --chat-template FILE) "
            "or use a chat model whose tokenizer defines one"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AuditModel(
        spec=spec,
        bridge=bridge,
        tokenizer=tokenizer,
        chat_template=chat_template,
        source_path=local_path,
        eos_token_ids=_eos_token_ids(bridge, tokenizer),
    )
    model.nudge = _load_nudge(local_path, model.d_model)
    logger.info(
        "loaded %s: %d blocks, d_model %d, %.1fM parameters", spec, model.n_layers, model.d_model,
        model.n_params / 1e6,
    )
    return model
