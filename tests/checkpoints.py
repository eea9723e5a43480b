"""Tiny random-initialised HuggingFace checkpoints of real architectures, for tests.

Each checkpoint is a real ``save_pretrained`` folder (config, safetensors weights and a
byte-level BPE tokenizer trained here), so loading goes through the same code path as a
downloaded model. Weights use a larger init range than the architectures' default so
that greedy argmax is not decided by float noise between near-equal logits.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|unk|>", "<|user|>", "<|assistant|>"]
CORPUS = [
    "Sure, here is a guide. Step 1: ... Step 2: ...",
    "I'm sorry, but I can't help with that.",
    "Write a guide to baking bread. What is the capital of France? Paris.",
    "hello world how are you today tell me a story about a cat",
    "Answer Yes or No: Yes No Yes No Yes No",
]
VOCAB_SIZE = 160
ARCHITECTURES = ("llama", "qwen2", "gemma2", "gpt2")


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=sorted(set("".join(CORPUS))),
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        padding_side="left",
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _config(arch: str, vocab_size: int, special: dict):
    from transformers import Gemma2Config, GPT2Config, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, initializer_range=0.3, **special)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=128, **common)
    if arch == "gemma2":
        return Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=64,
                            **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **common)
    raise ValueError(f"unknown architecture {arch!r}: use one of {', '.join(ARCHITECTURES)}")


def make_checkpoint(root: Path, arch: str = "llama", chat_template: str | None = CHAT_TEMPLATE, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` checkpoint with its tokenizer under ``root/arch``; return the folder."""
    from transformers import AutoModelForCausalLM

    folder = Path(root) / arch
    tokenizer = make_tokenizer(chat_template)
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = _config(arch, len(tokenizer), special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
