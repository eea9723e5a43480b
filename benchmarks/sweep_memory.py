"""Peak memory of a sweep: the GPT-2-shaped model over 64 prompts, every layer and 3 budgets.

Runs ``lvs_core.sweep.run_sweep`` into a temporary folder and reports the process's peak
resident memory (``ru_maxrss``) on the CPU, or the peak allocated CUDA memory. The chunk
size is the engine's own choice from free memory unless ``--batch-size`` is given.
``--max-cells`` stops after that many (layer, budget) cells: every chunk has the same
size, so the peak is reached in the first one, and a CPU run of the whole grid takes hours.

    python benchmarks/sweep_memory.py --model gpt2 --prompts 64 --budgets 0.05,0.1,0.2
"""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from common import base_parser, build_gpt2_shaped, setup

from lvs_core.sweep import SweepConfig, parse_budgets, run_sweep


class StopAfter(Exception):
    pass


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=("demo", "gpt2"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--budgets", default="0.05,0.1,0.2")
    parser.add_argument("--batch-size", type=int, default=0, help="rows per chunk (default: 0, from free memory)")
    parser.add_argument("--max-cells", type=int, default=0, help="stop after N cells (default: 0, the whole grid)")
    args = parser.parse_args()
    setup(args)

    spec = "demo:dissociated" if args.model == "demo" else str(build_gpt2_shaped())
    config = SweepConfig(
        models=(spec,), layers="all", budgets=parse_budgets(args.budgets), prompts="heldout",
        max_prompts=args.prompts, batch_size=args.batch_size, device=args.device,
    )
    # The held-out set has 80 prompts, so 64 are available without repeats.
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def progress(done: int, total: int, label: str) -> None:
        if done:
            print(f"  {done}/{total} cells ({label}) at {time.perf_counter() - started:.0f} s", flush=True)
        if args.max_cells and done >= args.max_cells:
            raise StopAfter

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        try:
            run_sweep(config, f"{folder}/run", progress=progress)
            finished = "the whole grid"
        except StopAfter:
            finished = f"the first {args.max_cells} cells"
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"swept {finished} in {time.perf_counter() - started:.0f} s")
    print(f"peak resident memory of the process: {peak_rss / 2**30:.2f} GiB (before the sweep: {baseline_rss * 1024 / 2**30:.2f} GiB)")
    if args.device.startswith("cuda"):
        print(f"peak CUDA memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
