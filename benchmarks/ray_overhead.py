"""Ray executor overhead: the same sweep in-process and on Ray actors, side by side.

Both runs call ``lvs_core.sweep.run_sweep`` into a temporary folder and include model
loading, the clean generations, the attack and the writes. The overhead run gives Ray
one actor with the same thread count as the in-process run. The ratio of their wall
times is then the cost of the executor itself: the actor's start, its model load and
the transfer of the rows to the driver. The scaling run gives Ray ``--workers``
actors of ``--threads / --workers`` threads each (one per GPU with ``--device cuda``).
The starting of the local Ray cluster is timed apart and left out of both ratios. The
script also checks that every run wrote the same cells. The defaults are the demo run's
sweep (``lvs-audit demo-run``): both demo models, all layers, 4 budgets, 80 prompts.

    python benchmarks/ray_overhead.py --threads 2
    python benchmarks/ray_overhead.py --prompts 8 --layers 0,2,4 --budgets 0.05,0.1 --steps 5 --max-new-tokens 8
    python benchmarks/ray_overhead.py --prompts 32 --layers all --budgets 0.05,0.1,0.2 --workers 2
    python benchmarks/ray_overhead.py --device cuda --address HOST:6379 --workers 4
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

# A local cluster binds to 127.0.0.1 only (Ray reads this on import).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import base_parser, setup  # noqa: E402

from lvs_core.attack import AttackConfig  # noqa: E402
from lvs_core.executors import ExecutorConfig  # noqa: E402
from lvs_core.runs import load_run  # noqa: E402
from lvs_core.sweep import SweepConfig, parse_budgets, run_sweep  # noqa: E402


def timed_sweep(config: SweepConfig, folder: Path, execution: ExecutorConfig | None) -> tuple[float, pd.DataFrame]:
    """Run the sweep into ``folder`` and return its wall time in seconds and its cells."""
    started = time.perf_counter()
    path = run_sweep(config, folder, execution=execution)
    seconds = time.perf_counter() - started
    return seconds, load_run(path).cells


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo:safe,demo:dissociated", help="comma list of model specs")
    parser.add_argument("--prompts", type=int, default=80, help="held-out prompts per model (default: 80, all of them)")
    parser.add_argument("--layers", default="all", help="'all' or a comma list (default: all)")
    parser.add_argument("--budgets", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=0, help="rows per chunk (default: 0, sized from free memory)")
    parser.add_argument("--workers", type=int, default=0,
                        help="actors of the scaling run (default: 0 skips it); on CPU each gets --threads / --workers threads")
    parser.add_argument("--address", default="", help="Ray cluster to use (default: start a local one)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each executor, taking turns; medians are printed (default: 2)")
    args = parser.parse_args()
    setup(args)
    import ray

    threads = torch.get_num_threads()
    config = SweepConfig(
        models=tuple(spec.strip() for spec in args.models.split(",") if spec.strip()),
        layers=args.layers, budgets=parse_budgets(args.budgets), prompts="heldout", max_prompts=args.prompts,
        attack=AttackConfig(steps=args.steps), max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
        device=args.device,
    )

    started = time.perf_counter()
    if args.address:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=threads, include_dashboard=False, log_to_driver=False)
    cluster_seconds = time.perf_counter() - started
    gpus = int(ray.cluster_resources().get("GPU", 0))

    runs = {"local": None, "ray-1": ExecutorConfig(executor="ray", workers=1, cpus_per_worker=threads)}
    if args.workers and args.device.startswith("cuda"):
        runs["ray-n"] = ExecutorConfig(executor="ray", workers=args.workers)
    elif args.workers:
        runs["ray-n"] = ExecutorConfig(executor="ray", workers=args.workers, cpus_per_worker=max(1, threads // args.workers))

    # The executors take turns, so that a slow phase of a shared machine hits them alike.
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    cells: dict[str, pd.DataFrame] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, execution in runs.items():
                elapsed, cells[name] = timed_sweep(config, Path(folder) / f"{name}-{repeat}", execution)
                seconds[name].append(elapsed)
    local_seconds = statistics.median(seconds["local"])
    ray_seconds = statistics.median(seconds["ray-1"])
    local_cells = cells["local"]
    same = cells["ray-1"].equals(local_cells)
    scaling = (statistics.median(seconds["ray-n"]), cells["ray-n"]) if "ray-n" in runs else None

    n_cells = len(local_cells) // 2
    print(f"sweep: {', '.join(config.models)} x {args.prompts} prompts x layers {args.layers} x budgets {args.budgets}, "
          f"{args.steps} PGD steps, {args.max_new_tokens} tokens = {n_cells} (prompt, layer, budget) cells")
    print(f"ray cluster start: {cluster_seconds:.1f} s (not counted below); cluster GPUs: {gpus}")
    print(f"median of {args.repeats} runs each, executors taking turns; every run (s): "
          + "; ".join(f"{name} " + ", ".join(f"{value:.1f}" for value in values) for name, values in seconds.items()))
    print(f"in-process, {threads} threads:       {local_seconds:.1f} s = {n_cells / local_seconds:.2f} cells/s")
    print(f"ray, 1 actor of {threads} threads:     {ray_seconds:.1f} s = {n_cells / ray_seconds:.2f} cells/s")
    print(f"ray overhead: {ray_seconds - local_seconds:+.1f} s = {100 * (ray_seconds / local_seconds - 1):+.1f}% of the in-process wall time")
    print(f"same cells as in-process: {same}")
    if scaling is not None:
        scaling_seconds, scaling_cells = scaling
        print(f"ray, {args.workers} actors:                {scaling_seconds:.1f} s = {n_cells / scaling_seconds:.2f} cells/s "
              f"({local_seconds / scaling_seconds:.2f}x the in-process rate); same cells: {scaling_cells.equals(local_cells)}")
    ray.shutdown()


if __name__ == "__main__":
    main()
