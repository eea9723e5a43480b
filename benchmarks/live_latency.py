"""Live flip latency on the demo models: one prompt, one layer, one budget.

Three timings per prompt, medians over ``--prompts`` held-out prompts:

- attack: PGD, the random control and both 32-token generations, with the clean
  generation already computed (what moving the layer or budget control costs);
- full: the clean generation as well (a prompt seen for the first time);
- re-show: the dashboard's cached attack step (``dashboard.state.attack``) asked again
  for a result it computed before (going back to an earlier setting).

    python benchmarks/live_latency.py --threads 2
"""

from __future__ import annotations

import logging
import statistics
import time

from common import base_parser, heldout_prompts, setup, synchronize

from lvs_core.live import attack_step, clean_step

MODELS = ("demo:safe", "demo:dissociated")


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--layer", default="2")
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    setup(args)
    # The dashboard's caches run outside a Streamlit server here; silence their notices.
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    import os

    os.environ["LVS_AUDIT_DEVICE"] = args.device
    from dashboard import state

    prompts = heldout_prompts(args.prompts)
    print(f"{'model':18} {'attack ms':>10} {'full ms':>9} {'re-show ms':>11}")
    for spec in MODELS:
        model = state.shared_model(spec).model
        warm = clean_step(model, prompts[0], max_new_tokens=args.max_new_tokens)
        attack_step(model, prompts[0], args.layer, args.budget, warm, max_new_tokens=args.max_new_tokens)
        attack_times, full_times, reshow_times = [], [], []
        for prompt in prompts:
            synchronize(args.device)
            started = time.perf_counter()
            clean = clean_step(model, prompt, max_new_tokens=args.max_new_tokens)
            synchronize(args.device)
            middle = time.perf_counter()
            attack_step(model, prompt, args.layer, args.budget, clean, max_new_tokens=args.max_new_tokens)
            synchronize(args.device)
            finished = time.perf_counter()
            attack_times.append(finished - middle)
            full_times.append(finished - started)

            state.attack(spec, prompt, args.layer, args.budget, args.max_new_tokens)
            started = time.perf_counter()
            state.attack(spec, prompt, args.layer, args.budget, args.max_new_tokens)
            reshow_times.append(time.perf_counter() - started)
        print(
            f"{spec:18} {1000 * statistics.median(attack_times):10.0f} {1000 * statistics.median(full_times):9.0f} "
            f"{1000 * statistics.median(reshow_times):11.1f}"
        )


if __name__ == "__main__":
    main()
