"""Load causal LMs as TransformerLens ``TransformerBridge`` models.

A model spec is one of:

- ``demo:safe``, ``demo:dissociated`` or ``demo:harmful``: the embedded demo models in
  ``assets/models/``;
- a path to a local HuggingFace checkpoint folder (``config.json`` plus weights and a
  tokenizer);
- a hub id such as ``Qwen/Qwen2.5-0.5B-Instruct``. A complete snapshot in the local
  HuggingFace cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``) is loaded from its
  folder with no network access. Otherwise, unless ``HF_HUB_OFFLINE=1`` is set, the
  loader downloads the model from the hub. A model that is neither cached nor reachable
  raises :class:`AuditInputError` with the download command.

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
from typing import Any, Callable, Union

import torch

from lvs_core.errors import AuditInputError

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
DEMO_MODELS_DIR = ASSETS_DIR / "models"
DEMO_MODEL_NAMES = ("safe", "dissociated", "harmful")
EMBEDDING_LAYER = "embedding"

Layer = Union[str, int]
# Called with a stage description and the fraction of the load done (0 to 1).
LoadProgress = Callable[[str, float], None]

HUB_OFFLINE_ENV = "HF_HUB_OFFLINE"
_TRUE_VALUES = ("1", "ON", "YES", "TRUE")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HUB_CONNECT_TIMEOUT_S = 5.0


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


# A depth no model reaches, for checking the form of a layer list before a model is loaded.
ANY_DEPTH = 1_000_000


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


def hub_offline() -> bool:
    """Return whether ``HF_HUB_OFFLINE`` forbids hub access.

    Read at call time: ``huggingface_hub`` reads it once, when it is first imported.
    """
    return os.environ.get(HUB_OFFLINE_ENV, "").strip().upper() in _TRUE_VALUES


def hub_cache_dir() -> Path:
    """Return the HuggingFace hub cache folder: ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``."""
    explicit = os.environ.get("HF_HUB_CACHE", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME", "").strip() or "~/.cache"
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def _not_cached_message(repo_id: str, reason: str) -> str:
    return (
        f"model {repo_id!r} is not in the local HuggingFace cache ({hub_cache_dir()}) and the hub "
        f"cannot be reached ({reason}): download it on a connected machine with "
        f"`hf download {repo_id}` and copy the cache, set HF_HOME to the cache that has it, "
        "or give a local folder"
    )


def _snapshot_problem(folder: Path) -> str | None:
    """Return what a cached snapshot folder lacks to be loaded (config or weights), or ``None``."""
    # A file of a snapshot is a link into blobs/; exists() is false for a dangling one.
    present = {path.name for path in folder.iterdir() if path.exists()}
    if "config.json" not in present:
        return "no config.json"
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in present):
        return "no weights (*.safetensors or *.bin)"
    return None


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """Return the folder of ``repo_id``'s cached ``main`` snapshot, or ``None`` when it is not cached.

    Raises:
        AuditInputError: ``repo_id`` is not a valid hub id, or the cached snapshot lacks
            its config or weights.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=hub_cache_dir(), local_files_only=True))
    except HFValidationError as error:
        raise AuditInputError(
            f"invalid hub id {repo_id!r} ({str(error).splitlines()[0]}): use the form 'org/name'"
        ) from None
    except LocalEntryNotFoundError:
        return None
    problem = _snapshot_problem(folder)
    if problem is not None:
        raise AuditInputError(
            f"the cached snapshot of {repo_id!r} at {folder} is incomplete ({problem}): "
            f"download it again with `hf download {repo_id}`, or give a local folder"
        )
    return folder


def hub_endpoint() -> str:
    """Return the hub URL: ``$HF_ENDPOINT`` or https://huggingface.co."""
    return os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or "https://huggingface.co"


def hub_reachable(timeout_s: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Return whether a TCP connection to the hub's host opens within ``timeout_s`` seconds.

    ``huggingface_hub`` retries a refused connection five times with backoff (about
    30 s), so a load checks the connection once first.
    """
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            return True
    except OSError as error:
        logger.info("hub %s not reachable: %s", hub_endpoint(), error)
        return False


def _check_hub_access(repo_id: str) -> None:
    """Fetch ``repo_id``'s config.json from the hub, turning each failure into a one-line error.

    Raises:
        AuditInputError: the hub cannot be reached, or the repository is missing, gated
            or has no config.json.
    """
    if not hub_reachable():
        raise AuditInputError(_not_cached_message(repo_id, f"no connection to {hub_endpoint()}"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        hf_hub_download(repo_id, "config.json", cache_dir=hub_cache_dir())
    except GatedRepoError:
        raise AuditInputError(
            f"model {repo_id!r} is gated on the hub: accept its terms on its hub page, log in with "
            "`hf auth login`, or give a local folder"
        ) from None
    except RepositoryNotFoundError:
        raise AuditInputError(
            f"model {repo_id!r} not found on the hub: check the id (org/name), log in with "
            "`hf auth login` for a private model, or give a local folder"
        ) from None
    except OfflineModeIsEnabled:
        raise AuditInputError(_not_cached_message(repo_id, "offline mode is on")) from None
    except RemoteEntryNotFoundError:
        raise AuditInputError(
            f"hub repository {repo_id!r} has no config.json: it is not a transformers checkpoint"
        ) from None
    # huggingface_hub raises this when the request failed and no cached copy exists.
    except LocalEntryNotFoundError:
        raise AuditInputError(_not_cached_message(repo_id, "the connection failed")) from None
    except OSError as error:
        raise AuditInputError(_not_cached_message(repo_id, type(error).__name__)) from None


def resolve_hub_model(repo_id: str) -> str:
    """Return what ``boot_transformers`` should load for a hub id: its cached snapshot folder, or the id to download.

    Raises:
        AuditInputError: the id is invalid, or the model is neither cached nor reachable.
    """
    folder = cached_hub_snapshot(repo_id)
    if folder is not None:
        logger.info("loading %s from the local HuggingFace cache, revision %s", repo_id, folder.name)
        return str(folder)
    if hub_offline():
        raise AuditInputError(_not_cached_message(repo_id, f"{HUB_OFFLINE_ENV} is set"))
    _check_hub_access(repo_id)
    return repo_id


def _read_config(folder: str) -> dict:
    """Return a checkpoint folder's config.json, or raise a one-line error on a malformed one."""
    import json

    config_file = Path(folder) / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise AuditInputError(
            f"could not read {config_file} ({type(error).__name__}: {error}): "
            "check that the checkpoint folder is complete"
        ) from None
    if not isinstance(config, dict):
        raise AuditInputError(f"{config_file} is not a JSON object: check that the checkpoint folder is complete")
    return config


def _placement(device: str | None, n_devices: int) -> dict:
    """Return the placement arguments of ``boot_transformers``: one ``device``, or ``n_devices`` GPUs."""
    if n_devices < 1:
        raise AuditInputError(f"invalid --n-devices {n_devices}: use 1 or more GPUs per model")
    if n_devices == 1:
        return {"device": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cpu" or available < n_devices:
        raise AuditInputError(
            f"--n-devices {n_devices} splits the model over {n_devices} CUDA devices, but "
            f"{'--device cpu was given' if device == 'cpu' else f'this machine has {available}'}: "
            f"use --n-devices {max(1, available)} or run on a node with {n_devices} GPUs"
        )
    return {"n_devices": n_devices}


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:]) if args and isinstance(args[0], torch.Tensor) else None


def _contiguous_unembedding_input(bridge) -> None:
    """Make the unembedding's input contiguous before its matmul.

    With ``logits_to_keep``, HuggingFace passes the unembedding a slice of the last
    positions, which is not contiguous. Torch then multiplies it batch by batch against a
    broadcast copy of the vocabulary matrix, which made the target NLL of a GPT-2-sized
    model about a third slower here. A contiguous copy of the few kept positions is cheap.
    """
    output_embeddings = bridge.original_model.get_output_embeddings()
    if output_embeddings is not None:
        output_embeddings.register_forward_pre_hook(_contiguous_input)


def load_model(
    spec: str,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
    chat_template: str | None = None,
    progress: LoadProgress | None = None,
    n_devices: int = 1,
) -> AuditModel:
    """Load ``spec`` as a ``TransformerBridge`` in eval mode with gradients off.

    ``n_devices`` above 1 splits the blocks over that many CUDA devices (the bridge's
    ``n_devices`` placement, a balanced accelerate ``device_map``); ``device`` is then
    ignored and :attr:`AuditModel.device` is the device of the embedding.

    ``progress`` is called at the start of each stage (resolving the spec, reading the
    config, loading weights and tokenizer into the bridge, checking the chat template)
    and once more at the end. The weights stage takes nearly all of the time and reports
    nothing until it is done.

    Raises:
        AuditInputError: the spec names no demo model, folder or loadable hub id, or the
            tokenizer has no chat template and none was given.
    """
    from transformer_lens.model_bridge import TransformerBridge

    def report(stage: str, fraction: float) -> None:
        logger.info("loading %s: %s", spec, stage)
        if progress is not None:
            progress(stage, fraction)

    report("resolving the model", 0.0)
    name_or_path, local_path = resolve_model_path(spec)
    if local_path is None:
        name_or_path = resolve_hub_model(name_or_path)
        if Path(name_or_path).is_dir():
            local_path = name_or_path

    if local_path is not None:
        report("reading config.json", 0.1)
        config = _read_config(local_path)
        architecture = ", ".join(config.get("architectures") or [config.get("model_type", "unknown")])
        report(f"loading weights and tokenizer ({architecture})", 0.2)
    else:
        report("downloading and loading weights and tokenizer", 0.2)

    placement = _placement(device, n_devices)
    logger.info("loading %s from %s on %s", spec, name_or_path, placement)
    try:
        bridge = TransformerBridge.boot_transformers(name_or_path, dtype=dtype, **placement)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AuditInputError(
            f"could not load model {spec!r} ({first_line}): check the hub id, or download it "
            "into the HuggingFace cache first, or give a local folder"
        ) from error
    report("checking the tokenizer and chat template", 0.9)
    bridge.eval()
    for parameter in bridge.original_model.parameters():
        parameter.requires_grad_(False)
    _contiguous_unembedding_input(bridge)

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
    report("ready", 1.0)
    return model
