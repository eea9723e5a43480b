"""How sweep time grows with prompts, layers and budgets: three sizes of each, others fixed.

Each line times ``attack_cells`` (clean generations included) on the demo model. The
last column divides the time by the number of cells, so it stays flat when time grows
linearly.

    python benchmarks/scaling.py --model demo
"""

from __future__ import annotations

import time

from common import base_parser, heldout_prompts, load_benchmark_model, setup, synchronize

from lvs_core.attack import AttackConfig
from lvs_core.engine import attack_cells, clean_reference
from lvs_core.prompts import build_batch

BUDGETS = (0.02, 0.05, 0.1, 0.2)


def timed_grid(model, n_prompts: int, layers: list, budgets: tuple, device: str, max_new_tokens: int) -> float:
    synchronize(device)
    started = time.perf_counter()
    batch = build_batch(model, heldout_prompts(n_prompts))
    clean = clean_reference(model, batch, AttackConfig(), max_new_tokens=max_new_tokens)
    attack_cells(model, batch, [(layer, budget) for layer in layers for budget in budgets], clean, AttackConfig(),
                 max_new_tokens=max_new_tokens)
    synchronize(device)
    return time.perf_counter() - started


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=("demo", "gpt2"))
    parser.add_argument("--prompts", default="8,16,32", help="three prompt counts (default: 8,16,32)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    setup(args)
    model = load_benchmark_model(args.model, args.device)
    prompt_sizes = [int(item) for item in args.prompts.split(",")]
    base_prompts = prompt_sizes[0]
    middle = model.n_layers // 2
    layer_sizes = [[middle], [middle - 1, middle, middle + 1], list(range(model.n_layers))]

    # One untimed pass first, so that start-up costs do not land on the first line.
    timed_grid(model, 2, [middle], BUDGETS[:1], args.device, args.max_new_tokens)
    print(f"{'varied':8} {'prompts':>7} {'layers':>6} {'budgets':>7} {'cells':>6} {'seconds':>8} {'ms/cell':>8}")
    grids = [("prompts", n, [middle], BUDGETS[:1]) for n in prompt_sizes]
    grids += [("layers", base_prompts, layers, BUDGETS[:1]) for layers in layer_sizes]
    grids += [("budgets", base_prompts, [middle], BUDGETS[:k]) for k in (1, 2, 4)]
    for varied, n_prompts, layers, budgets in grids:
        seconds = timed_grid(model, n_prompts, layers, budgets, args.device, args.max_new_tokens)
        cells = n_prompts * len(layers) * len(budgets)
        print(f"{varied:8} {n_prompts:7d} {len(layers):6d} {len(budgets):7d} {cells:6d} {seconds:8.2f} {1000 * seconds / cells:8.1f}")


if __name__ == "__main__":
    main()
