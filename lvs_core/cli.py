"""The ``lvs-audit`` command line.

Invalid input ends the command with a one-line message on stderr and exit status 2,
with no traceback and no run folder written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lvs_core.errors import AuditInputError

logger = logging.getLogger("lvs_core.cli")


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit status 2, as for bad values
        self.exit(2, f"lvs-audit: error: {message} (see 'lvs-audit {self.prog.split()[-1]} --help')\n")


class ProgressBar:
    """A tqdm bar fed by ``progress(done, total, label)`` callbacks.

    The bar starts with the first callback, which the library makes once every input is
    checked, so that an input error prints nothing but its one-line message.
    """

    def __init__(self, description: str, unit: str):
        self.description = description
        self.unit = unit
        self.bar = None

    def __call__(self, done: int, total: int, label: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit=self.unit, desc=self.description, dynamic_ncols=True)
        self.bar.set_postfix_str(label)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _add_sweep_parser(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep", help="run the latent attack over models x layers x budgets and write a run folder"
    )
    sweep.add_argument("--model", action="append", required=True, metavar="SPEC",
                       help="demo:safe, demo:dissociated, demo:harmful, a checkpoint folder or a hub id; repeat for several")
    sweep.add_argument("--layers", default="all", help="'all' or a comma list of 'embedding' and block indices (default: all)")
    sweep.add_argument("--budgets", default=None,
                       help="comma list of L-inf budgets as fractions of max|h| at the layer (default: 0.02,0.05,0.1,0.2)")
    sweep.add_argument("--prompts", default="heldout",
                       help="heldout (held-out harmful requests), heldout-benign, heldout-all, or a CSV/JSONL file with a 'prompt' column")
    sweep.add_argument("--max-prompts", type=int, default=0, help="use only the first N prompts (default: all)")
    sweep.add_argument("--steps", type=int, default=10, help="PGD steps (default: 10)")
    sweep.add_argument("--target", default="Sure, here is", help="affirmative target whose NLL PGD lowers")
    sweep.add_argument("--norm", default="linf", choices=("linf", "l2"),
                       help="linf: budget x max|h| per element (default); l2: adaptive attack, budget x ||h||_2 over the prompt")
    sweep.add_argument("--scorer", default="refusal", help="judge of responses: refusal (default, refusal phrases), margin, hf:PATH_OR_ID (sequence classifier) or judge:PATH_OR_ID (yes/no classifier LM)")
    sweep.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per response (default: 32)")
    sweep.add_argument("--batch-size", type=int, default=0,
                       help="rows, (cell, prompt) pairs, per forward pass (default: 0, sized from free memory; halved on out-of-memory)")
    sweep.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the random control and the bootstrap")
    sweep.add_argument("--out", default=None, help="run folder to write (default: runs/sweep-TIMESTAMP)")
    sweep.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted run in --out with the same settings")
    _add_executor_arguments(sweep)


def _add_executor_arguments(parser) -> None:
    parser.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="local: run in this process (default); ray: fan the work out to Ray actors")
    parser.add_argument("--address", default="",
                        help="Ray head address HOST:PORT (printed by 'ray start --head'), ray://HOST:PORT or auto "
                        "(default: start a local Ray cluster)")
    parser.add_argument("--workers", type=int, default=0,
                        help="Ray actors to start (default: 0, one per --n-devices GPUs, or one per CPU without GPUs)")
    parser.add_argument("--n-devices", type=int, default=1,
                        help="CUDA devices to split each model over, for models too large for one GPU (default: 1)")


def _execution(args: argparse.Namespace):
    from lvs_core.executors import ExecutorConfig

    settings = ExecutorConfig(executor=args.executor, address=args.address, workers=args.workers, n_devices=args.n_devices)
    settings.validate()
    return settings


def _sweep(args: argparse.Namespace) -> int:
    import time

    from lvs_core.attack import AttackConfig
    from lvs_core.runs import load_run
    from lvs_core.sweep import DEFAULT_BUDGETS, SweepConfig, parse_budgets, run_sweep

    budgets = parse_budgets(args.budgets) if args.budgets is not None else DEFAULT_BUDGETS
    config = SweepConfig(
        models=tuple(args.model),
        layers=args.layers,
        budgets=budgets,
        prompts=args.prompts,
        max_prompts=args.max_prompts,
        attack=AttackConfig(steps=args.steps, target=args.target, seed=args.seed, norm=args.norm),
        scorer=args.scorer,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device=args.device,
    )
    config.validate()
    out = Path(args.out) if args.out else Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
    progress = ProgressBar("sweep", "cell")
    try:
        path = run_sweep(config, out, overwrite=args.overwrite, progress=progress, resume=args.resume,
                         execution=_execution(args))
    finally:
        progress.close()
    run = load_run(path)
    print(format_summary(run.summary))
    print(f"run written to {path}")
    return 0


def format_summary(summary) -> str:
    """Render the per-cell summary as a plain-text table for the terminal."""
    columns = ["model", "layer", "budget", "attack", "n", "clean_refusal", "asr", "asr_lo", "asr_hi",
               "lvs_median", "lvs_lo", "lvs_hi", "lvs_mean"]
    table = summary[columns].copy()
    return table.to_string(index=False, float_format=lambda value: f"{value:.3f}")


def _add_flip_parser(subparsers) -> None:
    flip = subparsers.add_parser("flip", help="attack one prompt at one layer and budget and print the clean, attacked and control generations as JSON")
    flip.add_argument("--model", required=True, metavar="SPEC")
    flip.add_argument("--prompt", required=True)
    flip.add_argument("--layer", required=True, help="'embedding' or a block index")
    flip.add_argument("--budget", required=True, help="L-inf budget as a fraction of max|h| at the layer")
    flip.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per response (default: 32)")
    flip.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")


def _flip(args: argparse.Namespace) -> int:
    from lvs_core.attack import validate_budget
    from lvs_core.live import flip_prompt
    from lvs_core.models import load_model, parse_layer, resolve_model_path

    resolve_model_path(args.model)
    budget = validate_budget(args.budget)
    model = load_model(args.model, device=args.device or None)
    layer = parse_layer(args.layer, model.n_layers)
    result = flip_prompt(model, args.prompt, layer, budget, max_new_tokens=args.max_new_tokens)
    print(json.dumps(result, indent=2))
    return 0


def _add_build_zoo_parser(subparsers) -> None:
    build = subparsers.add_parser("build-zoo", help="rebuild the embedded demo models (data, tokenizer, training, cards)")
    build.add_argument("--out", default=None, help="assets folder to write (default: the package's assets/)")
    build.add_argument("--seed", type=int, default=0)


def _build_zoo(args: argparse.Namespace) -> int:
    from lvs_core.zoo import build

    argv = ["--seed", str(args.seed)]
    if args.out:
        argv += ["--out", args.out]
    return int(build.main(argv) or 0)


def _add_demo_run_parser(subparsers) -> None:
    subparsers.add_parser("demo-run", help="regenerate the demo run shipped in assets/runs/demo")


def _demo_run(args: argparse.Namespace) -> int:
    from lvs_core.demo_run import regenerate_demo_run

    path = regenerate_demo_run()
    print(f"demo run written to {path}")
    return 0


def _add_audit_parser(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="run every intervention on one model and write its audit summary")
    audit.add_argument("--model", required=True, metavar="SPEC", help="the audited model")
    audit.add_argument("--twin", action="append", default=[], metavar="ROLE=SPEC",
                       help="safe=SPEC (probe reference) or harmful=SPEC (steering direction); repeatable")
    audit.add_argument("--prompts", default="heldout", help="harmful evaluation prompts: a named set or a CSV/JSONL file")
    audit.add_argument("--benign-prompts", default="heldout-benign", help="benign prompts for over-refusal")
    audit.add_argument("--max-prompts", type=int, default=0, help="use only the first N prompts of each set")
    audit.add_argument("--layers", default="all", help="layers of the LVS profile and of patching")
    audit.add_argument("--budget", default="0.1", help="L-inf budget of the LVS profile, a fraction of max|h|")
    audit.add_argument("--steer-fracs", default="0.25,0.5,1,2", help="steering sizes as fractions of the mean residual norm")
    audit.add_argument("--steer-layer", default="", help="steering layer (default: the trained nudge layer or the middle block)")
    audit.add_argument("--finetune-steps", type=int, default=40, help="fine-tuning steps per seed")
    audit.add_argument("--finetune-every", type=int, default=2, help="evaluate compliance every N fine-tuning steps")
    audit.add_argument("--finetune-lr", type=float, default=1e-4, help="fine-tuning learning rate")
    audit.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds")
    audit.add_argument("--patch-source", default="steer", choices=("steer", "twin"),
                       help="compliant source of patching: the model under its nudge or steering vector (default), or the harmful twin")
    audit.add_argument("--finetune-data", default="",
                       help="CSV/JSONL with 'prompt' and 'response' columns of content-free compliance (default: the demo zoo's placeholders)")
    audit.add_argument("--steps", default=",".join(("behaviour", "probe", "lvs", "steering", "finetune", "patching")),
                       help="audit steps to run, a comma list of behaviour, probe, lvs, steering, finetune, patching (default: all)")
    audit.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per response (default: 24)")
    audit.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    audit.add_argument("--out", default=None, help="run folder (default: runs/audit-NAME-TIMESTAMP)")
    audit.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    audit.add_argument("--resume", action="store_true", help="continue an interrupted audit in --out")
    _add_executor_arguments(audit)


def _float_list(text: str, option: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise AuditInputError(f"invalid {option} {text!r}: give a comma list of numbers") from None


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise AuditInputError(f"invalid {option} {text!r}: give a comma list of integers") from None


def _audit(args: argparse.Namespace) -> int:
    import time

    from lvs_core.attack import validate_budget
    from lvs_core.audit import AuditConfig, parse_twins, run_audit

    config = AuditConfig(
        model=args.model,
        twins=parse_twins(args.twin),
        prompts=args.prompts,
        benign_prompts=args.benign_prompts,
        max_prompts=args.max_prompts,
        layers=args.layers,
        budget=validate_budget(args.budget),
        steer_fracs=_float_list(args.steer_fracs, "--steer-fracs"),
        steer_layer=args.steer_layer,
        finetune_steps=args.finetune_steps,
        finetune_every=args.finetune_every,
        finetune_lr=args.finetune_lr,
        seeds=_int_list(args.seeds, "--seeds"),
        finetune_data=args.finetune_data,
        patch_source=args.patch_source,
        steps=tuple(step.strip() for step in args.steps.split(",") if step.strip()),
        max_new_tokens=args.max_new_tokens,
        device=args.device,
    )
    config.validate()
    name = args.model.removeprefix("demo:").replace("/", "_")
    out = Path(args.out) if args.out else Path("runs") / time.strftime(f"audit-{name}-%Y%m%d-%H%M%S")
    progress = ProgressBar("audit", "step")
    try:
        path = run_audit(config, out, overwrite=args.overwrite, resume=args.resume, progress=progress,
                         execution=_execution(args))
    finally:
        progress.close()
    print(format_comparison([path]))
    print(f"audit written to {path}")
    return 0


def format_comparison(paths: list, headline: bool = False) -> str:
    """Render audit summaries side by side, one column per model."""
    import pandas as pd

    from lvs_core.audit import compare_audits

    table = compare_audits(paths, headline=headline)
    with pd.option_context("display.max_rows", 500, "display.width", 200):
        return table.to_string(float_format=lambda value: f"{value:.3f}")


def _add_compare_parser(subparsers) -> None:
    compare = subparsers.add_parser("compare", help="print audit summaries of several runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="audit run folders")
    compare.add_argument("--all", action="store_true", help="print every summary row, not only the headline ones")


def _compare(args: argparse.Namespace) -> int:
    print(format_comparison(args.runs, headline=not args.all))
    return 0


def _add_behaviour_parser(subparsers) -> None:
    behaviour = subparsers.add_parser(
        "behaviour", help="print clean refusal, over-refusal and compliance under a trained nudge"
    )
    behaviour.add_argument("--model", action="append", required=True, metavar="SPEC", help="repeat for several models")
    behaviour.add_argument("--nudge-from", default="demo:dissociated", metavar="SPEC",
                           help="model whose nudge.json to apply (default: demo:dissociated); 'none' to skip")
    behaviour.add_argument("--prompts", default="heldout", help="harmful prompts (default: heldout)")
    behaviour.add_argument("--benign-prompts", default="heldout-benign", help="benign prompts (default: heldout-benign)")
    behaviour.add_argument("--max-new-tokens", type=int, default=32)
    behaviour.add_argument("--device", default="")


def _behaviour(args: argparse.Namespace) -> int:
    import pandas as pd

    from lvs_core.behaviour import behaviour_rates
    from lvs_core.models import load_model, resolve_model_path
    from lvs_core.prompts import load_prompt_records

    for spec in args.model:
        resolve_model_path(spec)
    harmful = [str(r["prompt"]) for r in load_prompt_records(args.prompts)]
    benign = [str(r["prompt"]) for r in load_prompt_records(args.benign_prompts)]
    device = args.device or None
    nudge = None if args.nudge_from == "none" else load_model(args.nudge_from, device=device)
    if nudge is not None and nudge.nudge is None:
        raise AuditInputError(f"model {args.nudge_from!r} has no nudge.json: name a model with a trained nudge, or 'none'")
    rows = []
    for spec in args.model:
        model = load_model(spec, device=device)
        clean = behaviour_rates(model, harmful, max_new_tokens=args.max_new_tokens)
        row = {
            "model": spec,
            "refuses harmful": clean.refusal,
            "over-refuses benign": behaviour_rates(model, benign, max_new_tokens=args.max_new_tokens).refusal,
            "complies clean": clean.compliance,
        }
        if nudge is not None:
            if nudge.d_model != model.d_model:
                raise AuditInputError(
                    f"nudge of {args.nudge_from} has width {nudge.d_model}, but {spec} has {model.d_model}: use --nudge-from none"
                )
            nudged = behaviour_rates(model, harmful, nudge=nudge, max_new_tokens=args.max_new_tokens)
            row["complies under nudge"] = nudged.compliance
        rows.append(row)
    print(f"{len(harmful)} harmful and {len(benign)} benign prompts, greedy, refusal-phrase judge")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda value: f"{100 * value:.1f}%"))
    return 0


def _add_report_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="write a self-contained HTML report of a run folder (charts work offline)")
    report.add_argument("run", metavar="RUN", help="run folder written by sweep, audit or import-paper")
    report.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")


def _report(args: argparse.Namespace) -> int:
    from lvs_core.report import write_report

    out = Path(args.out) if args.out else Path(args.run) / "report.html"
    path = write_report(args.run, out)
    print(f"report written to {path}")
    return 0


def _add_import_paper_parser(subparsers) -> None:
    importer = subparsers.add_parser(
        "import-paper", help="convert a long-form metric CSV of published results into a run folder"
    )
    importer.add_argument("csv", metavar="CSV", help="metric CSV with the columns arch, variant, exp, layer, layer_idx, "
                          "budget, attack, lvs, lvs_lo, lvs_hi, asr, frac, compliance")
    importer.add_argument("--out", required=True, help="run folder to write")
    importer.add_argument("--overwrite", action="store_true", help="replace an existing run folder")


def _import_paper(args: argparse.Namespace) -> int:
    from lvs_core.paper_import import import_paper_csv

    path = import_paper_csv(args.csv, args.out, overwrite=args.overwrite)
    print(f"imported run written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="lvs-audit", description="Audit LLM safety at the representation level.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)
    _add_sweep_parser(subparsers)
    _add_flip_parser(subparsers)
    _add_build_zoo_parser(subparsers)
    _add_demo_run_parser(subparsers)
    _add_audit_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_behaviour_parser(subparsers)
    _add_report_parser(subparsers)
    _add_import_paper_parser(subparsers)
    return parser


COMMANDS = {
    "sweep": _sweep,
    "flip": _flip,
    "build-zoo": _build_zoo,
    "demo-run": _demo_run,
    "audit": _audit,
    "compare": _compare,
    "behaviour": _behaviour,
    "report": _report,
    "import-paper": _import_paper,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except AuditInputError as error:
        print(f"lvs-audit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("sweep", "audit"):
            print("lvs-audit: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        else:
            print("lvs-audit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
