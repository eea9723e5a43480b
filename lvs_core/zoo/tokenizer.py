"""Byte-level BPE tokenizer and chat format of the demo model zoo.

A chat renders as ``<|bos|><|user|>{prompt}<|end|><|assistant|>{response}<|end|>``.
The chat template writes ``<|bos|>`` itself, so the tokenizer has no post-processor
and adds no special token when it encodes text. Encoding the template output with
``add_special_tokens=True`` therefore still yields exactly one BOS. ``<|end|>`` ends a
turn and is the EOS token that generation stops at. Padding is on the left, as
batched generation needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|bos|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"
PAD_TOKEN = "<|pad|>"
# The order fixes the ids 0..4.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|bos|><|user|>' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' + message['content'] + '<|end|>' }}"
    "{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported, got ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
DEFAULT_VOCAB_SIZE = 1500


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    logger.info("trained byte-level BPE tokenizer with %d tokens", core.get_vocab_size())
    return wrap_tokenizer(core)


def wrap_tokenizer(core: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` with the zoo's special tokens and chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[USER_TOKEN, ASSISTANT_TOKEN],
        padding_side="left",
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_prompt_text(prompt: str) -> str:
    """Return the chat-formatted text of one user turn followed by the assistant tag."""
    return f"{BOS_TOKEN}{USER_TOKEN}{prompt}{END_TOKEN}{ASSISTANT_TOKEN}"


def encode_chat(tokenizer: PreTrainedTokenizerFast, prompt: str, response: str | None = None) -> tuple[list[int], int]:
    """Encode a chat and return ``(token_ids, prompt_length)``.

    The prompt part is the chat template with the generation prompt, so it ends with
    ``<|assistant|>``. ``response``, when given, is appended as ``response<|end|>``.
    Special tokens split the text, so encoding the two parts separately gives the same
    ids as encoding the whole chat.
    """
    prompt_ids = tokenizer.encode(chat_prompt_text(prompt), add_special_tokens=False)
    if response is None:
        return prompt_ids, len(prompt_ids)
    response_ids = tokenizer.encode(response + END_TOKEN, add_special_tokens=False)
    return prompt_ids + response_ids, len(prompt_ids)


def check_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise ValueError if the chat template and ``encode_chat`` disagree or BOS is doubled."""
    messages = [{"role": "user", "content": "How do I add 2 and 3?"}]
    template_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    own_ids, _ = encode_chat(tokenizer, messages[0]["content"])
    if list(template_ids) != own_ids:
        raise ValueError(f"chat template ids {template_ids} differ from encode_chat ids {own_ids}")
    bos_count = list(template_ids).count(tokenizer.bos_token_id)
    if bos_count != 1:
        raise ValueError(f"chat-formatted prompt has {bos_count} BOS tokens, expected exactly 1")
    with_specials = tokenizer(chat_prompt_text(messages[0]["content"]), add_special_tokens=True)["input_ids"]
    if with_specials != own_ids:
        raise ValueError("the tokenizer adds special tokens of its own; it must not have a post-processor")


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: Path) -> None:
    """Save ``tokenizer.json``, ``tokenizer_config.json`` and the chat template into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    check_tokenizer(tokenizer)
    return tokenizer
