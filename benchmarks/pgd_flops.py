"""Arithmetic rate of the PGD phase as a fraction of the machine's measured fp32 matmul rate.

The PGD phase of one chunk (forward and backward passes of every step) runs once under
``torch.utils.flop_counter.FlopCounterMode``, which counts the FLOPs of the matmuls and
attention that actually execute, then once more without it, timed. The matmul rate is
the median over a few products of two 2048 x 2048 fp32 matrices on the same device.

    python benchmarks/pgd_flops.py --model gpt2 --rows 64
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import base_parser, heldout_prompts, load_benchmark_model, matmul_rate, median_seconds, setup

from lvs_core.attack import AttackConfig, pgd_attack
from lvs_core.engine import residual_scales
from lvs_core.prompts import build_batch


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=("demo", "gpt2"))
    parser.add_argument("--rows", type=int, default=64, help="prompts in the chunk (default: 64)")
    parser.add_argument("--layer", default="middle", help="attacked block, or 'middle' (default)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup(args)

    model = load_benchmark_model(args.model, args.device)
    layer = model.n_layers // 2 if args.layer == "middle" else int(args.layer)
    batch = build_batch(model, heldout_prompts(args.rows))
    config = AttackConfig()
    eps = 0.1 * residual_scales(model, batch, [layer], "linf")[layer]

    def run() -> None:
        pgd_attack(model, batch, layer, eps, config, skip_clean_blocks=True)

    run()
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    flops = counter.get_total_flops()
    seconds = median_seconds(run, args.repeats, args.device)
    peak = matmul_rate(args.device)
    rate = flops / seconds
    print(f"model {args.model}: {model.n_layers} blocks, d_model {model.d_model}; PGD at block {layer}, "
          f"{args.rows} prompts of up to {batch.input_ids.shape[1]} tokens, {config.steps} steps")
    print(f"PGD phase: {flops / 1e9:.1f} GFLOP in {seconds:.2f} s = {rate / 1e9:.1f} GFLOP/s")
    print(f"fp32 matmul rate: {peak / 1e9:.1f} GFLOP/s")
    print(f"fraction of matmul rate: {rate / peak:.0%}")


if __name__ == "__main__":
    main()
