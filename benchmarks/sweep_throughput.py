"""Sweep throughput: the batched engine against the one-cell-at-a-time baseline, side by side.

A cell is one (prompt, layer, budget) with the PGD attack, the random control and their
generations. The engine runs the whole grid in chunks; the baseline runs the first
``--baseline-cells`` cells spread over the same grid, one at a time. Both include the
clean generations. The two alternate in ``--rounds`` rounds (the engine reruns the whole
grid each round), and the ratio of their cells per second is the speed-up.

    python benchmarks/sweep_throughput.py --model demo
    python benchmarks/sweep_throughput.py --model gpt2 --prompts 8 --layers 0,5,11 --baseline-cells 4
"""

from __future__ import annotations

import time

from common import base_parser, heldout_prompts, load_benchmark_model, setup, synchronize

from baseline import baseline_cell
from lvs_core.attack import AttackConfig
from lvs_core.engine import attack_cells, clean_reference
from lvs_core.models import parse_layers
from lvs_core.prompts import build_batch
from lvs_core.sweep import parse_budgets


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=("demo", "gpt2"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--layers", default="all", help="'all' or a comma list (default: all)")
    parser.add_argument("--budgets", default="0.05,0.1")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--baseline-cells", type=int, default=16, help="cells the baseline runs in all (default: 16)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of engine and baseline (default: 2)")
    args = parser.parse_args()
    setup(args)

    model = load_benchmark_model(args.model, args.device)
    prompts = heldout_prompts(args.prompts)
    layers = parse_layers(args.layers, model.n_layers)
    budgets = parse_budgets(args.budgets)
    cells = [(layer, budget) for layer in layers for budget in budgets]
    config = AttackConfig()

    grid = [(prompt, layer, budget) for layer, budget in cells for prompt in prompts]
    # Spread the baseline's cells over the grid, so that it covers low and high layers alike.
    stride = max(1, len(grid) // args.baseline_cells)
    sample = grid[::stride][: args.baseline_cells]

    # Alternate the two in rounds, so that a slow spell of a shared machine hits both.
    engine_seconds = baseline_seconds = 0.0
    engine_cells = baseline_cells = 0
    for round_index in range(args.rounds):
        synchronize(args.device)
        started = time.perf_counter()
        batch = build_batch(model, prompts)
        clean = clean_reference(model, batch, config, max_new_tokens=args.max_new_tokens)
        rows = attack_cells(model, batch, cells, clean, config, max_new_tokens=args.max_new_tokens)
        synchronize(args.device)
        engine_seconds += time.perf_counter() - started
        engine_cells += len(rows) // 2

        share = sample[round_index :: args.rounds]
        synchronize(args.device)
        started = time.perf_counter()
        for prompt, layer, budget in share:
            baseline_cell(model, prompt, layer, budget, config, max_new_tokens=args.max_new_tokens)
        synchronize(args.device)
        baseline_seconds += time.perf_counter() - started
        baseline_cells += len(share)

    engine_rate = engine_cells / engine_seconds
    baseline_rate = baseline_cells / baseline_seconds
    print(f"model {args.model}: {model.n_layers} blocks, d_model {model.d_model}, {model.n_params / 1e6:.1f}M parameters")
    print(f"grid: {len(prompts)} prompts x {len(layers)} layers x {len(budgets)} budgets = {len(grid)} cells, "
          f"{args.rounds} rounds")
    print(f"engine:   {engine_cells} cells in {engine_seconds:.1f} s = {engine_rate:.2f} cells/s")
    print(f"baseline: {baseline_cells} cells in {baseline_seconds:.1f} s = {baseline_rate:.3f} cells/s")
    print(f"speed-up: {engine_rate / baseline_rate:.1f}x")


if __name__ == "__main__":
    main()
