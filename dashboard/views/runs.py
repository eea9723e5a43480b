"""Runs: start sweeps and audits in the background, list, compare, export, import and delete runs.

The page itself reads only run folders, never a model: a sweep or audit loads its own
models inside a background job (:mod:`dashboard.jobs`), which keeps running when the user
leaves the page. While a job runs, the jobs panel polls it once a second.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import streamlit as st

from dashboard import jobs, model_picker, run_catalog, state
from dashboard.export import show_chart, show_table, slug
from lvs_core.attack import AttackConfig, validate_budget
from lvs_core.audit import STEPS as AUDIT_STEPS
from lvs_core.audit import AuditConfig
from lvs_core.errors import AuditInputError
from lvs_core.paper_import import import_paper_csv
from lvs_core.report import build_report
from lvs_core.sweep import DEFAULT_BUDGETS, SweepConfig, parse_budgets

logger = logging.getLogger("dashboard.views.runs")

POLL_S = 1.0
NO_TWIN = "(none)"
# Session keys: the job ids this session saw running, the run waiting for a delete
# confirmation, and a notice to show after a rerun.
SEEN_RUNNING_KEY = "runs_seen_running"
DELETE_PENDING_KEY = "runs_delete_pending"
NOTICE_KEY = "runs_notice"
RESULT_PAGES = {"sweep": ("views/heatmaps.py", "LVS heatmaps"), "audit": ("views/interventions.py", "Interventions")}


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise AuditInputError(f"invalid {what} {text!r}: give a comma list of integers such as 0,1,2") from None
    if not values:
        raise AuditInputError(f"no {what} given: give a comma list of integers such as 0,1,2")
    return values


def _float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise AuditInputError(f"invalid {what} {text!r}: give a comma list of numbers such as 0.25,0.5,1") from None


def check_layers_text(text: str) -> str:
    """Return ``text`` if it is ``all`` or a comma list of ``embedding`` and block indices, else raise.

    The indices are checked against the model's depth only when the job loads it.
    """
    text = text.strip()
    if text.lower() == "all":
        return "all"
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if not items:
        raise AuditInputError("no layers given: enter 'all' or a list such as embedding,0,3")
    for item in items:
        if item not in ("embedding", "embed", "emb") and not item.isdigit():
            raise AuditInputError(f"invalid layer {item!r}: use 'all' or a comma list of 'embedding' and block indices such as 0,3")
    return text


def _model_options() -> tuple[list[str], str]:
    specs = state.model_specs()
    selected = model_picker.selected_spec()
    if selected and selected not in specs:
        specs = [*specs, selected]
    return specs, selected or (specs[0] if specs else "")


def _device() -> str:
    return state.model_device() or ""


# ---------------------------------------------------------------- jobs panel


def _job_unit(job: jobs.Job) -> str:
    return "cells" if job.kind == "sweep" else "steps"


def _render_job(job: jobs.Job, registry: jobs.JobRegistry) -> None:
    with st.container(border=True):
        header, actions = st.columns([5, 1])
        header.markdown(f"**{job.name}** · {job.kind} · {job.status} · {job.elapsed_s:.0f} s")
        counts = f"{job.done}/{job.total} {_job_unit(job)}" if job.total else "preparing"
        st.progress(job.fraction, text=f"{job.name}: {100 * job.fraction:.0f}% · {counts} · {job.message}")
        if job.status == "running":
            actions.button("Cancel", key=f"cancel_{job.id}", on_click=registry.cancel, args=(job.id,),
                           help="Stop after the current cell or step; the folder stays resumable.")
            return
        if job.status == "done":
            page, title = RESULT_PAGES[job.kind]
            st.success(f"Run {job.name!r} finished in {job.elapsed_s:.0f} s and is written to {job.folder}.")
            st.page_link(page, label=f"Open it on the {title} page (pick {job.name} there)", icon=":material/open_in_new:")
        elif job.status == "failed":
            st.error(f"The {job.kind} {job.name!r} failed: {job.error}")
        else:
            st.warning(f"The {job.kind} {job.name!r} was cancelled; its finished parts are kept in {job.folder}.")
        if job.status in ("failed", "cancelled") and job.folder.is_dir():
            if actions.button("Resume", key=f"resume_{job.id}", help="Continue the run from its last finished part."):
                _resume(job.kind, job.config, job.folder)
        actions.button("Dismiss", key=f"dismiss_{job.id}", on_click=registry.forget, args=(job.id,))


def _resume(kind: str, config, folder: Path) -> None:
    try:
        jobs.registry().start(kind, config, folder, resume=True)
    except AuditInputError as error:
        st.error(str(error))
        return
    st.rerun(scope="app")


def render_jobs_panel() -> None:
    """Show every job with its progress; poll once a second while one runs, and rerun the page when one ends."""
    registry = jobs.registry()
    running = {job.id for job in registry.jobs() if job.status == "running"}
    st.session_state[SEEN_RUNNING_KEY] = running

    @st.fragment(run_every=POLL_S if running else None)
    def jobs_panel() -> None:
        current = registry.jobs()
        still_running = {job.id for job in current if job.status == "running"}
        # A job this page saw running has ended: rerun the whole page, so the run list
        # shows the new folder and polling stops.
        if st.session_state.get(SEEN_RUNNING_KEY, set()) - still_running:
            st.session_state[SEEN_RUNNING_KEY] = still_running
            st.rerun(scope="app")
        if not current:
            return
        st.subheader("Jobs")
        for job in current:
            _render_job(job, registry)

    jobs_panel()


# ---------------------------------------------------------------- start a run


def _sweep_form(specs: list[str], selected: str, root: Path) -> None:
    with st.form("start_sweep"):
        models = st.multiselect("Models", specs, default=[selected] if selected else [], key="sweep_models",
                                help="Model specs from LVS_AUDIT_MODELS; the sidebar's model is preselected.")
        left, right = st.columns(2)
        layers = left.text_input("Layers", "all", key="sweep_layers", help="'all' or a comma list of 'embedding' and block indices.")
        budgets = right.text_input("Budgets", ",".join(f"{b:g}" for b in DEFAULT_BUDGETS), key="sweep_budgets",
                                   help="Comma list of L∞ radii as fractions of max|h| at the layer.")
        prompts = left.text_input("Prompts", state.prompt_source(), key="sweep_prompts",
                                  help="heldout, heldout-benign, heldout-all, or the path of a CSV/JSONL file with a 'prompt' column.")
        max_prompts = right.number_input("Max prompts (0 = all)", min_value=0, value=0, step=1, key="sweep_max_prompts")
        pgd_steps = left.number_input("PGD steps", min_value=1, value=10, step=1, key="sweep_pgd_steps")
        max_new_tokens = right.number_input("Max new tokens", min_value=1, value=32, step=1, key="sweep_max_new_tokens")
        scorer = left.text_input("Judge (scorer)", "refusal", key="sweep_scorer",
                                 help="refusal (refusal phrases), margin, hf:PATH_OR_ID or judge:PATH_OR_ID.")
        name = right.text_input("Run name", time.strftime("sweep-%Y%m%d-%H%M%S"), key="sweep_name",
                                help=f"Folder name under {root}.")
        overwrite = st.checkbox("Overwrite a run of the same name", key="sweep_overwrite")
        submitted = st.form_submit_button("Start sweep", type="primary", icon=":material/play_arrow:", key="start_sweep_button")
    if not submitted:
        return
    try:
        config = SweepConfig(
            models=tuple(models),
            layers=check_layers_text(layers),
            budgets=parse_budgets(budgets),
            prompts=prompts.strip(),
            max_prompts=int(max_prompts),
            attack=AttackConfig(steps=int(pgd_steps)),
            scorer=scorer.strip(),
            max_new_tokens=int(max_new_tokens),
            device=_device(),
        )
        _start("sweep", config, name, overwrite, root, "sweep_name")
    except AuditInputError as error:
        st.error(str(error))


def _audit_form(specs: list[str], selected: str, root: Path) -> None:
    with st.form("start_audit"):
        left, right = st.columns(2)
        model = left.selectbox("Audited model", specs, index=specs.index(selected) if selected in specs else 0, key="audit_model")
        steer_layer = right.text_input("Steering layer", "", key="audit_steer_layer",
                                       help="Empty: the model's trained nudge layer, else the middle block.")
        twin_options = [NO_TWIN, *specs]
        # The demo zoo's twins, as in its shipped audits, when the list offers them.
        safe_twin = left.selectbox("Safe twin (probe reference)", twin_options, key="audit_safe_twin",
                                   index=twin_options.index("demo:safe") if "demo:safe" in specs else 0)
        harmful_twin = right.selectbox("Harmful twin (steering direction)", twin_options, key="audit_harmful_twin",
                                       index=twin_options.index("demo:harmful") if "demo:harmful" in specs else 0)
        layers = left.text_input("Layers", "all", key="audit_layers", help="Layers of the LVS profile and of patching.")
        budget = right.text_input("Budget", "0.1", key="audit_budget", help="L∞ budget of the LVS profile, a fraction of max|h|.")
        prompts = left.text_input("Harmful prompts", state.prompt_source(), key="audit_prompts")
        benign = right.text_input("Benign prompts", "heldout-benign", key="audit_benign_prompts")
        max_prompts = left.number_input("Max prompts per set (0 = all)", min_value=0, value=0, step=1, key="audit_max_prompts")
        max_new_tokens = right.number_input("Max new tokens", min_value=1, value=24, step=1, key="audit_max_new_tokens")
        pgd_steps = left.number_input("PGD steps", min_value=1, value=10, step=1, key="audit_pgd_steps")
        fracs = right.text_input("Steering fractions", "0.25,0.5,1,2", key="audit_fracs",
                                 help="Steering sizes as fractions of the mean residual norm.")
        seeds = left.text_input("Fine-tuning seeds", "0,1,2", key="audit_seeds")
        finetune_steps = right.number_input("Fine-tuning steps per seed", min_value=1, value=40, step=1, key="audit_finetune_steps")
        steps = st.multiselect("Audit steps", list(AUDIT_STEPS), default=list(AUDIT_STEPS), key="audit_steps")
        name = left.text_input("Run name", time.strftime("audit-%Y%m%d-%H%M%S"), key="audit_name",
                               help=f"Folder name under {root}.")
        overwrite = st.checkbox("Overwrite a run of the same name", key="audit_overwrite")
        submitted = st.form_submit_button("Start audit", type="primary", icon=":material/play_arrow:", key="start_audit_button")
    if not submitted:
        return
    try:
        if not steps:
            raise AuditInputError("no audit step chosen: pick at least one of " + ", ".join(AUDIT_STEPS))
        twins = tuple((role, spec) for role, spec in (("safe", safe_twin), ("harmful", harmful_twin)) if spec != NO_TWIN)
        config = AuditConfig(
            model=model,
            twins=twins,
            prompts=prompts.strip(),
            benign_prompts=benign.strip(),
            max_prompts=int(max_prompts),
            layers=check_layers_text(layers),
            budget=validate_budget(budget),
            attack=AttackConfig(steps=int(pgd_steps)),
            steer_fracs=_float_list(fracs, "steering fractions"),
            steer_layer=steer_layer.strip(),
            finetune_steps=int(finetune_steps),
            seeds=_int_list(seeds, "fine-tuning seeds"),
            steps=tuple(steps),
            max_new_tokens=int(max_new_tokens),
            device=_device(),
        )
        _start("audit", config, name, overwrite, root, "audit_name")
    except AuditInputError as error:
        st.error(str(error))


def _start(kind: str, config, name: str, overwrite: bool, root: Path, name_key: str) -> None:
    registry = jobs.registry()
    folder = jobs.validate_run_name(name, root, overwrite=overwrite, busy=registry.running_folders())
    job = registry.start(kind, config, folder, overwrite=overwrite)
    # A fresh default name for the next run: this one is taken now.
    st.session_state.pop(name_key, None)
    st.session_state[NOTICE_KEY] = f"Started the {kind} {job.name!r}; its progress shows under Jobs."
    st.rerun(scope="app")


def render_start_tab(root: Path) -> None:
    st.caption(
        "The run loads its own copy of each model in the background and writes a run folder part by part. "
        "It keeps running if you leave this page; a cancelled or failed run resumes from its last finished part."
    )
    kind = st.radio("Kind", ["sweep", "audit"], horizontal=True, key="runs_kind",
                    captions=["LVS over models × layers × budgets", "every intervention on one model"])
    specs, selected = _model_options()
    if kind == "sweep":
        _sweep_form(specs, selected, root)
    else:
        _audit_form(specs, selected, root)


# ---------------------------------------------------------------- list, export, delete


@st.cache_data(show_spinner=False, max_entries=4)
def report_bytes(path: str, stamp: float) -> bytes:
    # ``stamp`` is the modification time of config.json, so a rewritten run is reported anew.
    return build_report(path).encode("utf-8")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _table_csv_callable(file: Path):
    def render() -> bytes:
        import pandas as pd

        return pd.read_parquet(file).to_csv(index=False).encode("utf-8")

    return render


def _render_export(info: run_catalog.RunInfo) -> None:
    st.markdown("**Export**")
    if not info.complete:
        st.info(f"{info.name!r} is {info.state}: the report and tables are offered once it is complete.")
        return
    folder = str(info.path.resolve())
    stamp = _mtime(info.path / "config.json")
    st.download_button(
        "HTML report",
        data=lambda: report_bytes(folder, stamp),
        file_name=f"{slug(info.name)}-report.html",
        mime="text/html",
        key=f"report_{info.path}",
        icon=":material/description:",
        on_click="ignore",
        type="primary",
        help="One self-contained file with the settings, a reading, the heatmaps, profiles and tables; opens offline.",
    )
    tables = run_catalog.run_tables(info.path)
    if tables:
        columns = st.columns(4)
        for index, (name, file) in enumerate(tables.items()):
            columns[index % len(columns)].download_button(
                f"{name}.csv",
                data=_table_csv_callable(file),
                file_name=f"{slug(info.name)}-{name}.csv",
                mime="text/csv",
                key=f"csv_{info.path}_{name}",
                icon=":material/download:",
                on_click="ignore",
            )


def _render_resume(info: run_catalog.RunInfo) -> None:
    """Offer to continue a partial sweep or audit, such as one left by a server that stopped mid-run."""
    if info.state != "partial" or info.shipped or info.kind not in RESULT_PAGES:
        return
    st.markdown("**Resume**")
    st.caption("The run stopped before it finished. Resuming keeps its finished parts and runs the rest with its own settings.")
    if st.button(f"Resume {info.name}", key="resume_partial", icon=":material/replay:"):
        try:
            config = jobs.config_from_settings(info.kind, info.settings)
        except AuditInputError as error:
            st.error(str(error))
            return
        _resume(info.kind, config, info.path)


def _render_delete(info: run_catalog.RunInfo, root: Path, running: set[Path]) -> None:
    st.markdown("**Delete**")
    reason = run_catalog.can_delete(info, root, running)
    if reason:
        st.caption(f"Cannot delete: {reason}.")
        return
    pending = st.session_state.get(DELETE_PENDING_KEY)
    if pending != str(info.path):
        if st.button(f"Delete {info.name}", key="delete_run", icon=":material/delete:"):
            st.session_state[DELETE_PENDING_KEY] = str(info.path)
            st.rerun()
        return
    st.warning(f"Delete the folder {info.path} ({info.size_bytes / 1e6:.2f} MB)? This cannot be undone.")
    confirm, cancel, _ = st.columns([1, 1, 4])
    if confirm.button("Confirm delete", key="delete_confirm", type="primary"):
        st.session_state.pop(DELETE_PENDING_KEY, None)
        try:
            run_catalog.delete_run(info, root, jobs.registry().running_folders())
        except AuditInputError as error:
            st.error(str(error))
            return
        except OSError as error:
            st.error(f"could not delete {info.path}: {error.strerror or error}; check the folder's permissions")
            return
        st.session_state[NOTICE_KEY] = f"Deleted the run {info.name!r}."
        st.rerun()
    if cancel.button("Cancel", key="delete_cancel"):
        st.session_state.pop(DELETE_PENDING_KEY, None)
        st.rerun()


def render_runs_tab(infos: list[run_catalog.RunInfo], root: Path, running: set[Path]) -> None:
    st.caption(f"Shipped runs and the run folders under {root} (LVS_AUDIT_RUNS_ROOT).")
    show_table(run_catalog.runs_table(infos), "runs", key="runs_list", width="stretch")
    if not any(not info.shipped for info in infos):
        st.info(f"No runs in {root} yet: start one in 'Start a run', or import published results.")
    if not infos:
        return
    labels = {str(info.path): f"{info.name}{' (shipped)' if info.shipped else ''} · {info.kind} · {info.state}" for info in infos}
    chosen = st.selectbox("Run", list(labels), format_func=labels.get, key="runs_selected",
                          help="The run to export or delete.")
    info = next(item for item in infos if str(item.path) == chosen)
    _render_export(info)
    _render_resume(info)
    _render_delete(info, root, running)


# ---------------------------------------------------------------- compare


def render_compare_tab(infos: list[run_catalog.RunInfo]) -> None:
    candidates = [info for info in infos if info.has_summary]
    if not candidates:
        st.info("No complete run with a summary to compare yet.")
        return
    st.caption(
        "Each model's highest median LVS of the PGD attack over all layers and budgets, its 95% CI and where it "
        "occurs, next to its clean refusal. Runs with other budgets or prompts are not on the same footing: "
        "compare peaks within a run, and across runs only for the same budgets."
    )
    names = {str(info.path): info.name for info in candidates}
    # The shipped demo next to the newest run of the user, when there is one.
    shipped = [str(info.path) for info in candidates if info.shipped][:1]
    own = [str(info.path) for info in candidates if not info.shipped][:1]
    default = (shipped + own) or list(names)[:2]
    chosen = st.multiselect("Runs to compare", list(names), default=default, format_func=names.get, key="runs_compare")
    if not chosen:
        st.info("Pick one or more runs.")
        return
    table = run_catalog.compare_runs([info for info in candidates if str(info.path) in chosen])
    show_table(table, "run comparison", key="runs_compare_table", width="stretch",
               column_config={"clean refusal": st.column_config.NumberColumn(format="percent"),
                              "ASR at peak": st.column_config.NumberColumn(format="percent")})
    show_chart(run_catalog.compare_figure(table), "run comparison", key="runs_compare_chart")


# ---------------------------------------------------------------- import


def render_import_tab(root: Path) -> None:
    st.caption(
        "Published results in the long-form metric CSV layout (columns arch, variant, exp, layer, layer_idx, budget, "
        "attack, lvs, lvs_lo, lvs_hi, asr, frac, compliance) become an imported run, listed and compared beside yours."
    )
    upload = st.file_uploader("Metric CSV", type=["csv"], key="import_upload")
    path = st.text_input("…or its path on the server", key="import_path", placeholder="/data/metric_llama3.2-3b.csv")
    source_name = upload.name if upload is not None else Path(path.strip()).name
    default_name = f"imported-{Path(source_name).stem}" if source_name else ""
    name = st.text_input("Run name", default_name, key=f"import_name_{default_name}", help=f"Folder name under {root}.")
    overwrite = st.checkbox("Overwrite a run of the same name", key="import_overwrite")
    if not st.button("Import", key="import_button", icon=":material/upload_file:"):
        return
    try:
        if upload is None and not path.strip():
            raise AuditInputError("no CSV given: upload a metric CSV or enter its path")
        folder = jobs.validate_run_name(name, root, overwrite=overwrite, busy=jobs.registry().running_folders())
        source = upload.getvalue() if upload is not None else path.strip()
        with st.spinner(f"Importing {source_name}…"):
            import_paper_csv(source, folder, source_name=source_name, overwrite=overwrite)
    except AuditInputError as error:
        st.error(str(error))
        return
    info = run_catalog.read_run_info(folder)
    st.session_state[NOTICE_KEY] = (
        f"Imported {source_name} as {folder.name!r}: {len(info.models) if info else 0} models. "
        "It is listed under Runs and on the LVS heatmaps page."
    )
    st.rerun()


# ---------------------------------------------------------------- page


st.title("Runs")
st.caption(
    "Start a sweep or an audit, follow its progress, and list, compare, export or delete run folders. "
    "Import published results to see them beside your own."
)
runs_root = state.runs_root()
notice = st.session_state.pop(NOTICE_KEY, None)
if notice:
    st.success(notice)

try:
    render_jobs_panel()
    running_folders = jobs.registry().running_folders()
    run_infos = run_catalog.list_run_infos(runs_root, running_folders)
    runs_tab, start_tab, compare_tab, import_tab = st.tabs(["Runs", "Start a run", "Compare", "Import"])
    with runs_tab:
        render_runs_tab(run_infos, runs_root, running_folders)
    with start_tab:
        render_start_tab(runs_root)
    with compare_tab:
        render_compare_tab(run_infos)
    with import_tab:
        render_import_tab(runs_root)
except AuditInputError as error:
    st.error(str(error))
