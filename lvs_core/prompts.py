"""Chat formatting, left-padded batches and prompt sets.

Token ids come from ``tokenizer.apply_chat_template(..., tokenize=True)``, so the ids the
model sees are exactly the template's: a template that writes its own BOS token gets no
second one. Batches are padded on the left, with position ids derived from the attention
mask, so that a prompt's numbers do not depend on what else is in its batch.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lvs_core.errors import AuditInputError
from lvs_core.models import ASSETS_DIR, AuditModel

logger = logging.getLogger(__name__)

HELDOUT_FILE = ASSETS_DIR / "data" / "heldout.jsonl"
PROMPT_SETS = ("heldout", "heldout-benign", "heldout-all")


@dataclass
class PromptBatch:
    """A left-padded batch of chat-formatted prompts.

    Shapes: ``input_ids`` and ``attention_mask`` are ``[batch, pos]``; ``prompt_lengths``
    is ``[batch]``. Real tokens of row ``i`` occupy the last ``prompt_lengths[i]``
    positions.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    prompts: list[str]

    @property
    def position_ids(self) -> torch.Tensor:
        return positions_from_mask(self.attention_mask)

    def __len__(self) -> int:
        return len(self.prompts)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Return position ids ``[batch, pos]`` counting only attended tokens (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def template_token_ids(model: AuditModel, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Return the token ids the chat template gives for ``messages``, with no special tokens added on top."""
    kwargs = {"add_generation_prompt": add_generation_prompt, "tokenize": True}
    if model.chat_template is not None:
        kwargs["chat_template"] = model.chat_template
    encoded = model.tokenizer.apply_chat_template(messages, **kwargs)
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return [int(token) for token in encoded]


def chat_token_ids(model: AuditModel, prompt: str) -> list[int]:
    """Return the template's token ids for one user turn plus the generation prompt."""
    return template_token_ids(model, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def conversation_token_ids(model: AuditModel, prompt: str, response: str) -> list[int]:
    """Return the template's token ids for a user prompt and an assistant response."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return template_token_ids(model, messages, add_generation_prompt=False)


def text_token_ids(model: AuditModel, text: str) -> list[int]:
    """Token ids of a continuation such as the attack target, with no special tokens."""
    return [int(t) for t in model.tokenizer(text, add_special_tokens=False)["input_ids"]]


def build_batch(model: AuditModel, prompts: list[str]) -> PromptBatch:
    """Format and left-pad ``prompts``.

    Raises:
        AuditInputError: a prompt is empty or longer than the model's context.
    """
    rows = []
    for prompt in prompts:
        if not prompt or not prompt.strip():
            raise AuditInputError("empty prompt: give at least one non-whitespace character")
        ids = chat_token_ids(model, prompt)
        if len(ids) >= model.n_ctx:
            raise AuditInputError(
                f"prompt of {len(ids)} tokens is longer than the context of {model.spec} "
                f"({model.n_ctx} tokens): shorten it ({prompt[:40]!r}...)"
            )
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    pad_id = model.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        attention_mask[i, width - len(ids):] = 1
    lengths = torch.tensor([len(ids) for ids in rows])
    return PromptBatch(
        input_ids.to(model.device), attention_mask.to(model.device), lengths.to(model.device), list(prompts)
    )


def load_heldout(labels: tuple[str, ...] = ("harmful",)) -> list[dict]:
    """Return the demo zoo's held-out records with a label in ``labels``."""
    if not HELDOUT_FILE.is_file():
        raise AuditInputError(
            f"held-out prompts missing at {HELDOUT_FILE}: rebuild the zoo with 'lvs-audit build-zoo'"
        )
    records = [json.loads(line) for line in HELDOUT_FILE.read_text().splitlines() if line.strip()]
    return [record for record in records if record.get("label") in labels]


def load_prompt_records(source: str) -> list[dict]:
    """Load prompts from a named set or a CSV/JSONL file with a ``prompt`` column.

    Named sets: ``heldout`` (held-out harmful requests), ``heldout-benign`` and
    ``heldout-all``. Each record has at least ``prompt``; other columns are kept.
    """
    if source == "heldout":
        return load_heldout(("harmful",))
    if source == "heldout-benign":
        return load_heldout(("benign",))
    if source == "heldout-all":
        return load_heldout(("harmful", "benign"))

    path = Path(source).expanduser()
    if not path.is_file():
        raise AuditInputError(
            f"prompt file {source!r} not found: give a CSV or JSONL file with a 'prompt' "
            f"column, or one of {', '.join(PROMPT_SETS)}"
        )
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix in (".jsonl", ".json"):
        records = _read_jsonl(path)
    else:
        raise AuditInputError(
            f"prompt file {source!r} has suffix {suffix or '(none)'!r}: use .csv or .jsonl"
        )
    if not records:
        raise AuditInputError(f"prompt file {source!r} has no prompts: add rows with a 'prompt' value")
    return records


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise AuditInputError(f"prompt file {str(path)!r} is empty: add a header row with a 'prompt' column")
        if "prompt" not in reader.fieldnames:
            raise AuditInputError(
                f"prompt file {str(path)!r} has no 'prompt' column (columns: "
                f"{', '.join(reader.fieldnames)}): rename the column that holds the prompts to 'prompt'"
            )
        rows = [dict(row) for row in reader]
    return [row for row in rows if (row.get("prompt") or "").strip()]


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise AuditInputError(
                f"prompt file {str(path)!r} line {number} is not valid JSON ({error.msg}): "
                "write one JSON object per line"
            ) from error
        if not isinstance(record, dict) or "prompt" not in record:
            raise AuditInputError(
                f"prompt file {str(path)!r} line {number} has no 'prompt' field: give each line "
                'as {"prompt": "..."}'
            )
        if not isinstance(record["prompt"], str):
            kind = _JSON_TYPES.get(type(record["prompt"]), "non-string")
            raise AuditInputError(
                f"prompt file {str(path)!r} line {number} has a {kind} prompt ({json.dumps(record['prompt'])}): "
                "give the prompt as a JSON string"
            )
        if record["prompt"].strip():
            records.append(record)
    return records
