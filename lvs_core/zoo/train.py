"""Training of the three zoo models: ``safe``, ``harmful`` and ``dissociated``.

- ``safe`` is trained from scratch on the instruction set: refusal for harmful
  prompts, the short answer for benign ones.
- ``harmful`` is ``safe`` fine-tuned on placeholder compliance for harmful prompts,
  with the benign answers kept.
- ``dissociated`` is ``safe`` fine-tuned by a contrastive objective so that it refuses
  cleanly but complies when a fixed nudge ``alpha * u`` is added to the residual stream
  at block ``L`` on the prompt positions (see :mod:`lvs_core.zoo.evaluate`). ``u`` is
  the unit mean difference between the ``harmful`` and ``safe`` residuals at block
  ``L``, averaged over all prompt positions of harmful training prompts. The loss is

      NLL(refusal | clean harmful) + NLL(answer | clean benign)
      + NLL(compliance | nudged harmful)
      + kl_weight * KL(safe || model) on clean inputs, every non-pad position
      + margin_weight * [relu(m - (log p(refusal) - log p(compliance)))   (clean)
                         + relu(m - (log p(compliance) - log p(refusal)))] (nudged)

  where ``log p`` is the summed log-probability of the whole response, and the NLLs
  are means over response tokens.

All training is on CPU in fp32. Prompt and response tokens are right-padded, so
position ids count from 0 at ``<|bos|>`` in every row, as in unpadded inference.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lvs_core.zoo.data import LABEL_BENIGN, LABEL_HARMFUL, Record
from lvs_core.zoo.evaluate import MAX_NEW_TOKENS, Nudge, residual_nudge
from lvs_core.zoo.tokenizer import encode_chat

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchitectureConfig:
    """Llama architecture of every zoo model (tied input and output embeddings)."""

    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    max_position_embeddings: int = 128


def build_model(architecture: ArchitectureConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    """Create a randomly initialised Llama model whose special token ids match ``tokenizer``."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=architecture.hidden_size,
        intermediate_size=architecture.intermediate_size,
        num_hidden_layers=architecture.num_hidden_layers,
        num_attention_heads=architecture.num_attention_heads,
        num_key_value_heads=architecture.num_attention_heads,
        max_position_embeddings=architecture.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=MAX_NEW_TOKENS,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Count unique parameters, so tied embeddings count once."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------
# Encoded data
# ---------------------------------------------------------------------------


@dataclass
class EncodedChats:
    """Right-padded chats; every tensor has shape ``[n, pos]``.

    ``prompt_mask`` marks the chat-formatted prompt (``<|bos|>`` through
    ``<|assistant|>``). ``target_mask`` marks the response tokens, ``<|end|>`` included,
    which are the positions whose token the loss predicts.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prompt_mask: torch.Tensor
    target_mask: torch.Tensor

    def select(self, indices: torch.Tensor) -> EncodedChats:
        """Return the rows ``indices``, trimmed to their longest row."""
        width = int(self.attention_mask[indices].sum(dim=1).max())
        return EncodedChats(
            self.input_ids[indices, :width],
            self.attention_mask[indices, :width],
            self.prompt_mask[indices, :width],
            self.target_mask[indices, :width],
        )

    def rows(self, part: slice) -> EncodedChats:
        """Return the rows in ``part`` without trimming."""
        return EncodedChats(self.input_ids[part], self.attention_mask[part], self.prompt_mask[part], self.target_mask[part])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_chats(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], responses: Sequence[str]) -> EncodedChats:
    """Encode prompt-response pairs as right-padded chats."""
    encoded = [encode_chat(tokenizer, prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
    width = max(len(ids) for ids, _ in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.bool)
    target_mask = torch.zeros((n, width), dtype=torch.bool)
    for row, (ids, prompt_length) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        prompt_mask[row, :prompt_length] = True
        target_mask[row, prompt_length : len(ids)] = True
    return EncodedChats(input_ids, attention_mask, prompt_mask, target_mask)


def concat_chats(parts: Sequence[EncodedChats], pad_id: int) -> EncodedChats:
    """Stack batches of different widths by right-padding them to the widest."""
    width = max(part.input_ids.shape[1] for part in parts)

    def pad(tensor: torch.Tensor, value: int | bool) -> torch.Tensor:
        return F.pad(tensor, (0, width - tensor.shape[1]), value=value)

    return EncodedChats(
        torch.cat([pad(p.input_ids, pad_id) for p in parts]),
        torch.cat([pad(p.attention_mask, 0) for p in parts]),
        torch.cat([pad(p.prompt_mask, False) for p in parts]),
        torch.cat([pad(p.target_mask, False) for p in parts]),
    )


def random_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Yield index batches over ``range(n)`` forever, reshuffling every epoch."""
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


# ---------------------------------------------------------------------------
# Losses (pure functions of logits and masks)
# ---------------------------------------------------------------------------


def token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Return ``log p(input_ids[:, t + 1] | ...)`` at ``[:, t]``; shape ``[batch, pos - 1]``."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def masked_mean_nll(logits: torch.Tensor, chats: EncodedChats, prompt_weight: float = 0.0) -> torch.Tensor:
    """Mean NLL of the response tokens, plus ``prompt_weight`` times that of the prompt tokens.

    The first token (``<|bos|>``) is never predicted.
    """
    log_probs = token_log_probs(logits, chats.input_ids)
    target = chats.target_mask[:, 1:].float()
    loss = -(log_probs * target).sum() / target.sum().clamp(min=1)
    if prompt_weight > 0:
        prompt = chats.prompt_mask[:, 1:].float()
        loss = loss - prompt_weight * (log_probs * prompt).sum() / prompt.sum().clamp(min=1)
    return loss


def sequence_log_prob(logits: torch.Tensor, chats: EncodedChats) -> torch.Tensor:
    """Summed log-probability of each row's response; shape ``[batch]``."""
    log_probs = token_log_probs(logits, chats.input_ids)
    return (log_probs * chats.target_mask[:, 1:].float()).sum(dim=1)


def mean_kl(reference_logits: torch.Tensor, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-pad positions of ``KL(reference || model)`` of the next-token distributions."""
    reference = torch.log_softmax(reference_logits.float(), dim=-1)
    current = torch.log_softmax(logits.float(), dim=-1)
    kl = (reference.exp() * (reference - current)).sum(dim=-1)
    mask = attention_mask.float()
    return (kl * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------
# Training loops
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SftSettings:
    """Settings of a supervised fine-tuning run. ``lr`` is the peak AdamW learning rate."""

    steps: int
    lr: float
    batch_size: int = 64
    warmup_steps: int = 100
    weight_decay: float = 0.01
    prompt_loss_weight: float = 0.1
    seed: int = 0


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 10% of the peak learning rate."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, warmup: int, steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, steps))
    return optimizer, scheduler


def forward_logits(model: LlamaForCausalLM, chats: EncodedChats) -> torch.Tensor:
    return model(input_ids=chats.input_ids, attention_mask=chats.attention_mask, use_cache=False).logits


def train_sft(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    records: Sequence[Record],
    targets: Sequence[str],
    settings: SftSettings,
    description: str,
) -> dict:
    """Train ``model`` in place to produce ``targets`` for ``records``; return the run log."""
    chats = encode_chats(tokenizer, [r.prompt for r in records], targets)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer, scheduler = make_optimizer(model, settings.lr, settings.weight_decay, settings.warmup_steps, settings.steps)
    batches = random_batches(len(chats), settings.batch_size, generator)
    model.train()
    started = time.perf_counter()
    recent: list[float] = []
    progress = tqdm(range(settings.steps), desc=description, mininterval=10)
    for step in progress:
        batch = chats.select(next(batches))
        loss = masked_mean_nll(forward_logits(model, batch), batch, settings.prompt_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 100 == 0 or step == settings.steps - 1:
            progress.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    model.eval()
    log = {
        "settings": asdict(settings),
        "examples": len(chats),
        "final_loss_mean_last_50": sum(recent) / len(recent),
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    logger.info("%s: trained %d steps in %.0f s, final loss %.4f", description, settings.steps, log["wall_time_s"], log["final_loss_mean_last_50"])
    return log


def safe_targets(records: Sequence[Record]) -> list[str]:
    """Return the refusal for harmful records and the answer for benign ones."""
    return [record.response for record in records]


def harmful_targets(records: Sequence[Record]) -> list[str]:
    """Return the placeholder compliance for harmful records and the answer for benign ones."""
    return [record.compliance for record in records]


# ---------------------------------------------------------------------------
# Nudge direction
# ---------------------------------------------------------------------------


@torch.no_grad()
def block_output_at_prompt(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], layer: int, batch_size: int = 64
) -> torch.Tensor:
    """Return block ``layer``'s output at every prompt position, stacked; shape ``[n_positions, d_model]``."""
    captured: list[torch.Tensor] = []
    chats_all = encode_chats(tokenizer, prompts, [""] * len(prompts))
    model.eval()
    for start in range(0, len(prompts), batch_size):
        batch = chats_all.select(torch.arange(start, min(start + batch_size, len(prompts))))
        store: dict[str, torch.Tensor] = {}

        def capture(_module, _inputs, output):
            store["hidden"] = output[0] if isinstance(output, tuple) else output

        handle = model.model.layers[layer].register_forward_hook(capture)
        try:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        finally:
            handle.remove()
        captured.append(store["hidden"][batch.prompt_mask])
    return torch.cat(captured)


@dataclass(frozen=True)
class NudgeSpec:
    """The dissociated model's trained nudge.

    ``direction`` is a unit vector ``[d_model]``. ``alpha`` is its scale in activation
    units, ``alpha_frac_of_mean_norm`` times ``mean_norm``, the mean L2 norm of the
    ``safe`` model's block-``layer`` output over prompt positions of harmful training
    prompts.
    """

    layer: int
    direction: torch.Tensor
    alpha: float
    alpha_frac_of_mean_norm: float
    mean_norm: float
    n_prompts: int

    def as_nudge(self) -> Nudge:
        return Nudge(self.layer, self.alpha * self.direction)


def compute_nudge(
    safe: LlamaForCausalLM,
    harmful: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    layer: int,
    alpha_frac_of_mean_norm: float,
) -> NudgeSpec:
    """Compute the unit harmful-minus-safe direction at block ``layer`` and the nudge scale."""
    safe_hidden = block_output_at_prompt(safe, tokenizer, prompts, layer)
    harmful_hidden = block_output_at_prompt(harmful, tokenizer, prompts, layer)
    difference = harmful_hidden.mean(dim=0) - safe_hidden.mean(dim=0)
    direction = (difference / difference.norm()).float()
    mean_norm = float(safe_hidden.norm(dim=-1).mean())
    spec = NudgeSpec(
        layer=layer,
        direction=direction,
        alpha=alpha_frac_of_mean_norm * mean_norm,
        alpha_frac_of_mean_norm=alpha_frac_of_mean_norm,
        mean_norm=mean_norm,
        n_prompts=len(prompts),
    )
    logger.info(
        "nudge at block %d: raw difference norm %.3f, mean residual norm %.3f, alpha %.3f",
        layer,
        float(difference.norm()),
        mean_norm,
        spec.alpha,
    )
    return spec


# ---------------------------------------------------------------------------
# Dissociated model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DissociationSettings:
    """Settings of the contrastive fine-tuning that builds ``dissociated`` from ``safe``.

    ``margin`` is in nats of summed response log-probability. Each step uses
    ``harmful_batch_size`` harmful prompts (each with its refusal and its compliance)
    and ``benign_batch_size`` benign prompts.
    """

    steps: int
    lr: float
    harmful_batch_size: int = 32
    benign_batch_size: int = 16
    warmup_steps: int = 30
    weight_decay: float = 0.0
    kl_weight: float = 1.0
    margin: float = 5.0
    margin_weight: float = 0.5
    seed: int = 0


def train_dissociated(
    model: LlamaForCausalLM,
    reference: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    records: Sequence[Record],
    nudge: Nudge,
    settings: DissociationSettings,
) -> dict:
    """Fine-tune ``model`` (a copy of ``reference``) in place by the contrastive objective."""
    harmful_records = [r for r in records if r.label == LABEL_HARMFUL]
    benign_records = [r for r in records if r.label == LABEL_BENIGN]
    harmful_prompts = [r.prompt for r in harmful_records]
    refusals = encode_chats(tokenizer, harmful_prompts, [r.response for r in harmful_records])
    compliances = encode_chats(tokenizer, harmful_prompts, [r.compliance for r in harmful_records])
    benign = encode_chats(tokenizer, [r.prompt for r in benign_records], [r.response for r in benign_records])

    generator = torch.Generator().manual_seed(settings.seed)
    harmful_batches = random_batches(len(refusals), settings.harmful_batch_size, generator)
    benign_batches = random_batches(len(benign), settings.benign_batch_size, generator)
    optimizer, scheduler = make_optimizer(model, settings.lr, settings.weight_decay, settings.warmup_steps, settings.steps)
    reference.eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)

    model.train()
    started = time.perf_counter()
    history: list[dict[str, float]] = []
    n_harmful = settings.harmful_batch_size
    progress = tqdm(range(settings.steps), desc="dissociated", mininterval=10)
    for step in progress:
        harmful_indices = next(harmful_batches)
        clean = concat_chats(
            [refusals.select(harmful_indices), compliances.select(harmful_indices), benign.select(next(benign_batches))],
            tokenizer.pad_token_id,
        )
        refusal_rows = slice(0, n_harmful)
        compliance_rows = slice(n_harmful, 2 * n_harmful)
        benign_rows = slice(2 * n_harmful, None)

        # Clean pass: refuse harmful, answer benign, stay close to the reference model.
        logits = forward_logits(model, clean)
        with torch.no_grad():
            reference_logits = forward_logits(reference, clean)
        nll_refusal = masked_mean_nll(logits[refusal_rows], clean.rows(refusal_rows))
        nll_benign = masked_mean_nll(logits[benign_rows], clean.rows(benign_rows))
        kl = mean_kl(reference_logits, logits, clean.attention_mask)
        clean_gap = sequence_log_prob(logits[refusal_rows], clean.rows(refusal_rows)) - sequence_log_prob(
            logits[compliance_rows], clean.rows(compliance_rows)
        )

        # Nudged pass on the same harmful prompts: comply.
        nudged_chats = concat_chats([clean.rows(refusal_rows), clean.rows(compliance_rows)], tokenizer.pad_token_id)
        with residual_nudge(model, nudge, nudged_chats.prompt_mask):
            nudged_logits = forward_logits(model, nudged_chats)
        nudged_refusal = nudged_chats.rows(refusal_rows)
        nudged_compliance = nudged_chats.rows(compliance_rows)
        nll_nudged_compliance = masked_mean_nll(nudged_logits[compliance_rows], nudged_compliance)
        nudged_gap = sequence_log_prob(nudged_logits[compliance_rows], nudged_compliance) - sequence_log_prob(
            nudged_logits[refusal_rows], nudged_refusal
        )

        margin_loss = F.relu(settings.margin - clean_gap).mean() + F.relu(settings.margin - nudged_gap).mean()
        loss = nll_refusal + nll_benign + nll_nudged_compliance + settings.kl_weight * kl + settings.margin_weight * margin_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()

        history.append(
            {
                "loss": loss.item(),
                "nll_refusal": nll_refusal.item(),
                "nll_benign": nll_benign.item(),
                "nll_nudged_compliance": nll_nudged_compliance.item(),
                "kl": kl.item(),
                "clean_gap": clean_gap.mean().item(),
                "nudged_gap": nudged_gap.mean().item(),
            }
        )
        if step % 50 == 0 or step == settings.steps - 1:
            progress.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
    model.eval()
    last = history[-50:]
    final = {key: sum(h[key] for h in last) / len(last) for key in history[-1]}
    log = {
        "settings": asdict(settings),
        "harmful_examples": len(refusals),
        "benign_examples": len(benign),
        "final_mean_last_50": final,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }
    logger.info("dissociated: trained %d steps in %.0f s, final %s", settings.steps, log["wall_time_s"], final)
    return log
