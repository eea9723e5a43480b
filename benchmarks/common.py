"""Models, prompts and machine facts shared by the benchmark scripts.

Two models: the demo zoo's ``dissociated`` (Llama, 6 blocks, d_model 192) and a
random-initialised model of GPT-2 small's shape (12 blocks, d_model 768, vocab 50257),
built once into ``benchmarks/.cache/`` with the demo tokenizer and chat template.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from lvs_core.models import AuditModel, load_model  # noqa: E402
from lvs_core.prompts import load_prompt_records  # noqa: E402

logger = logging.getLogger("benchmarks")

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
GPT2_SHAPED_DIR = CACHE_DIR / "gpt2-small-random"
DEMO_TOKENIZER_DIR = REPO_ROOT / "assets" / "models" / "dissociated"
MODELS = ("demo", "gpt2")


def build_gpt2_shaped(folder: Path = GPT2_SHAPED_DIR) -> Path:
    """Save a random GPT-2-small-shaped checkpoint with the demo tokenizer to ``folder`` once."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(DEMO_TOKENIZER_DIR)
    config = GPT2Config(
        n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    logger.info("built the GPT-2-shaped checkpoint in %s", folder)
    return folder


def load_benchmark_model(name: str, device: str) -> AuditModel:
    """Load ``demo`` (the dissociated demo model) or ``gpt2`` (GPT-2-small-shaped, random) on ``device``."""
    if name == "demo":
        return load_model("demo:dissociated", device=device)
    if name == "gpt2":
        return load_model(str(build_gpt2_shaped()), device=device)
    raise SystemExit(f"unknown benchmark model {name!r}: use one of {', '.join(MODELS)}")


def heldout_prompts(count: int) -> list[str]:
    """Return the first ``count`` held-out prompts, cycling when more are asked than exist."""
    prompts = [str(record["prompt"]) for record in load_prompt_records("heldout")]
    return [prompts[index % len(prompts)] for index in range(count)]


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Configure logging and threads, check the device, and print the machine line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} asked but torch sees no CUDA device: use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(args.device))


def machine_line(device: str) -> str:
    """Return one line naming the machine, the device, the thread count, torch and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    accelerator = torch.cuda.get_device_name(0) if device.startswith("cuda") else "no accelerator"
    return (
        f"# {time.strftime('%Y-%m-%d')} · {cpu} · {os.cpu_count()} cores · torch {torch.__version__} "
        f"· {torch.get_num_threads()} threads · device {device} ({accelerator})"
    )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(function, repeats: int, device: str) -> float:
    """Return the median wall time of ``function()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_rate(device: str, size: int = 2048, repeats: int = 5) -> float:
    """Return the measured fp32 matmul rate of ``device`` in FLOP/s (median of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    seconds = median_seconds(lambda: a @ b, repeats, device)
    return 2 * size**3 / seconds
