"""The `trainyard` command line.

trainyard run        train with the Prefect flow (params.yaml + --set overrides)
trainyard train      the same flow into a fixed run directory (the `dvc repro` stage)
trainyard sweep      search sweep.space with Optuna; trials as train runs under one parent MLflow run
trainyard validate   check a dataset; every problem with file and line
trainyard evaluate   write metrics.json from a finished run directory
trainyard data demo  generate the built-in demo dataset (and DVC-track it)
trainyard reproduce  re-run an MLflow run from its record; verdict identical / within tolerance / differs
trainyard serve      serve prefect.yaml's deployments on their schedules from this machine
trainyard doctor     preflight checks, each failure with its fix (and finishes runs an outage left open)
trainyard runs       recent runs: the params that differ, final metrics (like `dvc exp show`)
trainyard compare    runs side by side: differing params, reproduction key, final metrics
trainyard sync       finish MLflow runs a tracking outage or a killed process left open
trainyard promote    make a run's registered model version the champion (refuses other data unless --force)
trainyard ui         open the MLflow UI on the configured tracking store
trainyard prefect    status / stop of the background Prefect API that flow commands share

Exit codes: tasks.errors.EXIT_CODES (the README's table).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from tasks.adapters.mlflow_tracking import Tracker
    from tasks.params import Params

from tasks.errors import (
    DatasetError,
    DataSourceError,
    Interrupted,
    PreflightError,
    TrainyardError,
    UsageError,
)

REPRODUCTION_DIFFERS = 7  # exit code of `trainyard reproduce` when the verdict is "differs"
TERMINAL_ERROR_LINES = 8  # an error of a flow command shows this much; the log file holds all of it

_log_file: Path | None = None  # the full log of this command, when it runs a flow


def main(argv: Sequence[str] | None = None) -> int:
    global _log_file
    parser = _parser()
    args = parser.parse_args(argv)
    _log_file = None
    guard = None
    if args.func in (_cmd_run, _cmd_reproduce, _cmd_serve, _cmd_sweep):
        from flows.terminal import InterruptGuard

        guard = InterruptGuard(lambda exc: _interrupt_line(exc, argv))
        guard.install()
    try:
        return int(args.func(args) or 0)
    except TrainyardError as exc:
        _print_error(exc)
        return exc.exit_code
    except Interrupted as exc:
        return guard.report(exc) if guard else exc.exit_code
    except KeyboardInterrupt:
        print("trainyard: interrupted", file=sys.stderr)
        return 130
    finally:
        if guard is not None:  # back to Python's defaults (main() also runs inside tests)
            import signal

            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _print_error(exc: TrainyardError) -> None:
    from tasks.redact import redact

    lines = redact(str(exc)).splitlines() or [type(exc).__name__]
    if _log_file is not None and len(lines) > TERMINAL_ERROR_LINES:
        hidden = len(lines) - TERMINAL_ERROR_LINES + 1
        lines = lines[: TERMINAL_ERROR_LINES - 1] + [f"... {hidden} more line(s) in the log file"]
    print(f"trainyard: error: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(f"  {line}", file=sys.stderr)
    if _log_file is not None:
        import logging

        from flows.terminal import FILE_ONLY

        logging.getLogger(FILE_ONLY).error("trainyard: error: %s", exc)
        print(f"full log: {_log_file}", file=sys.stderr)


def _interrupt_line(exc: Interrupted, argv: Sequence[str] | None) -> str:
    import shlex

    again = shlex.join(["trainyard", *(sys.argv[1:] if argv is None else argv)])
    from tasks.run_finish import LAST_INTERRUPTION

    ctx = LAST_INTERRUPTION
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sweep"]:
        return (
            f"trainyard: sweep interrupted ({exc.signal_name}); its parent MLflow run is marked KILLED and its "
            f"running trials stopped with it; `{again}` resumes the study (interrupted trials resume from last.pt)"
        )
    if not ctx.get("run_id"):
        return f"trainyard: interrupted ({exc.signal_name}) before training started; nothing to resume"
    note = ctx.get("note", "")
    where = note.split(";", 1)[0].removeprefix(f"interrupted by {exc.signal_name} ")
    how = "resume with" if "resumes it" in note else "start again with"
    return (
        f"trainyard: interrupted ({exc.signal_name}) {where}; MLflow run {ctx['run_id']} marked KILLED; {how} `{again}`"
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainyard", description="Reproducible YOLO11 training pipelines.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_params(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override one parameter for this run, e.g. --set train.epochs=3 (repeatable)",
        )

    run = sub.add_parser("run", help="train with the Prefect flow and print the MLflow run")
    with_params(run)
    run.add_argument("--run-dir", default=None, help="output directory (default: runs/<mlflow run id>)")
    run.add_argument(
        "--force",
        action="store_true",
        help="train even if a finished run has the same data, params and image/environment",
    )
    run.set_defaults(func=_cmd_run, force=False)

    sw = sub.add_parser("sweep", help="search sweep.space with Optuna: each trial a training under one parent run")
    with_params(sw)
    sw.add_argument("--trials", type=int, default=None, metavar="N", help="trials the study ends with (sweep.trials)")
    sw.add_argument("--parallel", type=int, default=None, metavar="K", help="trials at once (sweep.parallel)")
    sw.set_defaults(func=_cmd_sweep)

    train = sub.add_parser("train", help="the train flow into a fixed run directory (used by dvc.yaml)")
    with_params(train)
    train.add_argument("--run-dir", required=True, help="output directory, e.g. runs/dvc")
    # dvc has already decided that this stage must run, and its outputs must land in --run-dir
    train.set_defaults(func=_cmd_run, force=True)

    val = sub.add_parser("validate", help="validate a YOLO dataset (default: data.source of params.yaml)")
    with_params(val)
    val.add_argument("--data", default=None, help="dataset folder or yaml to check as it is, instead of data.source")
    val.add_argument("--report", default=None, help="also write the report as JSON here")
    val.add_argument("--max-listed", type=int, default=20, help="problems to list before summarising (default 20)")
    val.set_defaults(func=_cmd_validate)

    st = sub.add_parser("stage", help="stage data.source into the verified local cache and print where")
    with_params(st)
    st.add_argument("--source", default=None, help="stage this instead of data.source (s3://bucket/prefix or a path)")
    st.add_argument("--root", default=None, help="stage.root to use instead of params.yaml's")
    st.add_argument("--verify", action="store_true", help="re-hash the staged copy even if the source looks unchanged")
    st.add_argument(
        "--json", action="store_true", help="print one JSON object (path, md5, files, bytes, reused, seconds)"
    )
    st.add_argument(
        "--record",
        default=None,
        metavar="FILE",
        help="write {md5, source, files, bytes} to FILE (the dvc.yaml stage output)",
    )
    st.set_defaults(func=_cmd_stage)

    ev = sub.add_parser("evaluate", help="write metrics.json from a finished run directory")
    ev.add_argument("--run-dir", required=True)
    ev.add_argument("--metrics", default="metrics.json", help="where to write (default: metrics.json)")
    ev.set_defaults(func=_cmd_evaluate)

    data = sub.add_parser("data", help="dataset helpers")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = data_sub.add_parser("demo", help="generate the demo dataset (skipped if present and intact)")
    demo.add_argument("--dest", default="data/demo")
    demo.add_argument("--dvc", action="store_true", help="also `dvc add` it (and push to the default remote)")
    demo.set_defaults(func=_cmd_data_demo)
    snap = data_sub.add_parser("snapshot", help="turn the staged data.source into a DVC-tracked version in data/NAME")
    with_params(snap)
    snap.add_argument("name", help="folder name under data/ (the new data.source)")
    snap.add_argument("--no-push", action="store_true", help="only dvc add; do not push to the default remote")
    snap.set_defaults(func=_cmd_data_snapshot)

    rep = sub.add_parser("reproduce", help="re-run an MLflow run from its record and say whether it came out the same")
    rep.add_argument(
        "run_id", metavar="RUN", help="a run id, or an alias of the registered model (champion, candidate)"
    )
    with_params(rep)
    rep.add_argument("--epochs", type=int, default=None, help="replay only the first N epochs (same schedule)")
    rep.add_argument(
        "--allow-drift", action="store_true", help="run even if the recorded image tag has moved; record it"
    )
    rep.add_argument("--checkout", action="store_true", help="run the recorded code commit in a temporary git worktree")
    rep.set_defaults(func=_cmd_reproduce)

    srv = sub.add_parser(
        "serve", help="run prefect.yaml's deployments on their schedules from this machine (no worker)"
    )
    srv.add_argument("--file", default="prefect.yaml", help="the prefect.yaml to read (default: ./prefect.yaml)")
    srv.add_argument(
        "--deployment",
        action="append",
        default=[],
        metavar="NAME",
        help="serve this deployment (repeatable; default: those of the 'trainyard' process pool)",
    )
    srv.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: one training per GPU box)")
    srv.add_argument("--check", action="store_true", help="check the deployments and schedules, print them, and exit")
    srv.set_defaults(func=_cmd_serve)

    doc = sub.add_parser(
        "doctor", help="preflight checks (Docker, GPU runtime, driver vs image CUDA, space, MLflow, data)"
    )
    with_params(doc)
    doc.set_defaults(func=_cmd_doctor)

    rs = sub.add_parser("runs", help="recent MLflow runs of the experiment: the params that differ, final metrics")
    with_params(rs)
    rs.add_argument("-n", type=int, default=20, help="how many runs, newest first (default 20)")
    rs.set_defaults(func=_cmd_runs)

    cp = sub.add_parser("compare", help="runs side by side: differing params, key, final metrics")
    cp.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    with_params(cp)
    cp.set_defaults(func=_cmd_compare)

    pr = sub.add_parser(
        "promote", help="point the registered model's alias champion at a run's version (same data version only)"
    )
    pr.add_argument("run_id", metavar="RUN", help="a run id, or an alias such as candidate")
    with_params(pr)
    pr.add_argument(
        "--force",
        action="store_true",
        help="promote even if it was validated on another data version than the champion",
    )
    pr.set_defaults(func=_cmd_promote)

    sy = sub.add_parser("sync", help="finish MLflow runs a tracking outage or a killed process left open")
    with_params(sy)
    sy.set_defaults(func=_cmd_sync)

    pf = sub.add_parser("prefect", help="the background Prefect API that trainyard commands share (status, stop)")
    pf.add_argument("action", choices=("status", "stop"))
    pf.set_defaults(func=_cmd_prefect)

    ui = sub.add_parser("ui", help="run the MLflow UI on the configured tracking store")
    with_params(ui)
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=_cmd_ui)
    return p


def _flow_session(params_path: str, command: str, background_api: bool = True) -> None:
    """Before a flow runs: Prefect's API (the background one, see flows.prefect_api) and settings, its full
    log to a file, and a quiet terminal."""
    global _log_file
    _prefect_defaults()
    if background_api:
        from flows.prefect_api import ensure_api

        ensure_api(lambda line: print(f"note: {line}", file=sys.stderr))
    from prefect.logging.configuration import ensure_logging_setup

    from flows.terminal import quiet_terminal, reap_orphaned_prefect_servers, start_log_file

    # Prefect's handlers first: it leaves the root logger alone when it finds one already there
    ensure_logging_setup()

    _log_file = start_log_file(Path(params_path).resolve().parent, command)
    quiet_terminal()
    for pid in reap_orphaned_prefect_servers():
        print(
            f"note: stopped Prefect's temporary server (pid {pid}) that a killed trainyard left running",
            file=sys.stderr,
        )


def _prefect_defaults() -> None:
    """Settings for Prefect's ephemeral API, unless the user chose otherwise."""
    # Its telemetry heartbeat races its own SQLite migrations on first use (a "database is
    # locked" traceback in the middle of the demo), and it phones home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # First use creates its database (tens of seconds on a busy 2-core box); Prefect's 20 s
    # default would fail a training that never even started.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _cmd_run(args: argparse.Namespace) -> int:
    from tasks.params import load_params

    params = load_params(args.params, args.overrides)
    params.model_ref()  # a typo fails here, before Prefect starts its API
    if args.command == "run" and not args.force and _answered_up_to_date(params):
        return 0
    _flow_session(args.params, args.command)
    from flows.train import train_flow  # imports Prefect: only for the commands that need it

    from tasks.redact import hide

    result = train_flow(
        params_path=args.params, overrides=[hide(o) for o in args.overrides], run_dir=args.run_dir, force=args.force
    )
    _print_result(
        result.outcome,
        result.run_id,
        result.run_name,
        result.experiment,
        result.metrics,
        result.model_version,
        result.run_dir,
        result.tracking_uri,
        result.run_url,
    )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from tasks.params import load_params

    extra = [f"sweep.{k}={v}" for k, v in (("trials", args.trials), ("parallel", args.parallel)) if v is not None]
    overrides = [*args.overrides, *extra]
    params = load_params(args.params, overrides)  # a typo fails here, before Prefect starts its API
    params.model_ref()
    _flow_session(args.params, "sweep")
    from flows.sweep import sweep_flow
    from tasks.redact import hide

    r = sweep_flow(params_path=args.params, overrides=[hide(o) for o in overrides])
    print()
    print(f"sweep        {r.study}: {r.complete} finished, {r.pruned} pruned, {r.failed} failed")
    if r.best_trial is not None and r.best_value is not None:
        values = " ".join(f"{k}={v}" for k, v in r.best_values.items())
        print(f"best         trial {r.best_trial}: {r.objective} {r.best_value:.4f}  ({values})")
        print(f"best run     {r.best_run_id}")
    if r.model_version:
        print(f"model        {r.model_version}  (trainyard promote {r.best_run_id} makes it the champion)")
    print(f"parent run   {r.parent_run_id}  (its trials are nested under it in the MLflow UI)")
    print(f"study        {r.storage}")
    if r.tracking_uri.startswith(("http://", "https://")):
        print(f"open         {r.parent_url}")
    else:
        print(f"open the UI  trainyard ui   (then {r.parent_url})")
    return 0


def _answered_up_to_date(params: "Params") -> bool:
    """Print the finished run that already trained on these inputs, without starting Prefect; False when
    there is none, or when anything is unsure (the flow then decides, and reports any error properly)."""
    from tasks.adapters.mlflow_tracking import Tracker, resolve_tracking_uri
    from tasks.evaluate import final_metrics
    from tasks.redact import redact
    from tasks.run_finish import unfinished
    from tasks.run_lease import RUN_DIR_TAG
    from tasks.runners import make_runner
    from tasks.stage import stage_from_params
    from tasks.up_to_date import up_to_date

    uri, _ = resolve_tracking_uri(params.tracking.uri, params.base_dir)
    try:
        if unfinished(params.base_dir):
            return False  # runs an outage left open: the flow finishes them first
        staged = stage_from_params(params)
        tracker = Tracker(uri)
        answer = up_to_date(params, tracker, staged, make_runner(params.runner.kind, params.container))
        if answer is None:
            return False
    except TrainyardError:
        return False
    prior = answer.run
    _print_result(
        "up to date",
        prior.run_id,
        prior.name,
        params.tracking.experiment,
        final_metrics(prior.metrics),
        answer.model_version,
        prior.tags.get(RUN_DIR_TAG, ""),
        redact(uri),
        tracker.run_url(prior),
    )
    return True


def _print_result(
    outcome: str,
    run_id: str,
    run_name: str,
    experiment: str,
    m: dict[str, float | int],
    model_version: str,
    run_dir: str,
    tracking_uri: str,
    run_url: str,
) -> None:
    print()
    if outcome == "up to date":
        print("up to date   same data, params and environment as this finished run; nothing trained (--force retrains)")
    print(f"MLflow run   {run_id}  ({run_name}, experiment {experiment!r})")
    print(f"mAP50        {m.get('mAP50', float('nan')):.4f}")
    print(f"mAP50-95     {m.get('mAP50-95', float('nan')):.4f}")
    if model_version:
        print(f"model        {model_version}  (trainyard promote {run_id} makes it the champion)")
    print(f"run dir      {run_dir}")
    print(f"tracking     {tracking_uri}")  # without a password (see tasks.redact)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"open         {run_url}")
    else:
        print(f"open the UI  trainyard ui   (then {run_url})")


def _cmd_validate(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.validate import check_staged, format_problems, format_warnings, validate_dataset

    if args.data:  # a folder or yaml as it is (absolute paths and outside folders are allowed here)
        label = args.data
        from tasks.params import ValidateParams

        options = ValidateParams()  # no params.yaml needed to check a folder
        if args.overrides or Path(args.params).exists():
            options = load_params(args.params, args.overrides).validate
        report = validate_dataset(Path(args.data), strict=options.strict)
    else:  # what training would read: the staged copy of data.source (a no-op when already staged)
        from tasks.stage import stage_from_params

        params = load_params(args.params, args.overrides)
        staged = stage_from_params(params)
        label = staged.source
        report = check_staged(params, staged)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if not report.ok:
        n = len(report.problems)
        raise DatasetError(
            f"dataset {label} has {n} problem{'s' if n != 1 else ''}:\n"
            + format_problems(report.problems, args.max_listed),
            report.problems,
        )
    splits = ", ".join(f"{k} {v.images} images / {v.boxes} boxes" for k, v in report.splits.items())
    print(f"dataset {label} is valid: {report.nc} classes; {splits}")
    if report.warnings:
        print(f"{len(report.warnings)} warning{'s' if len(report.warnings) != 1 else ''} (trainable, but check):")
        print(format_warnings(report.warnings, args.max_listed))
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.stage import stage_from_params

    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"data.source={args.source}")
    if args.root:
        overrides.append(f"stage.root={args.root}")
    params = load_params(args.params, overrides)
    staged = stage_from_params(params, verify=True if args.verify else None, progress=not args.json)
    summary = {
        "path": str(staged.path),
        "md5": staged.md5,
        "source": staged.source,
        "files": staged.files,
        "bytes": staged.bytes,
        "reused": staged.reused,
        "seconds": staged.seconds,
    }
    if args.record:
        record = {k: summary[k] for k in ("md5", "source", "files", "bytes")}  # stable: no paths, no timings
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=2) + "\n")
    for note in staged.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        how = "already staged" if staged.reused else "staged"
        print(f"{staged.source}: {how} {staged.files} files ({staged.bytes / 1e6:.1f} MB) in {staged.seconds:.2f} s")
        print(f"  md5  {staged.md5}\n  path {staged.path}")
    return 0


def _cmd_data_snapshot(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.snapshot import snapshot

    snap = snapshot(load_params(args.params, args.overrides), args.name, push=not args.no_push)
    print(f"{snap.source} -> {snap.path} ({snap.md5}); commit {snap.path}.dvc and set data.source: {snap.path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tasks.evaluate import write_metrics

    run_dir = Path(args.run_dir)
    if not (run_dir / "results.csv").exists():
        raise UsageError(f"{run_dir} holds no results.csv; run `trainyard train --run-dir {run_dir}` first")
    summary = write_metrics(run_dir, Path(args.metrics))
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_data_demo(args: argparse.Namespace) -> int:
    from tasks.demo_data import generate_demo_dataset
    from tasks.adapters.git_dvc import data_version, dvc_add, dvc_push

    dest = Path(args.dest)
    if not dest.exists():
        generate_demo_dataset(dest)
        print(f"generated demo dataset at {dest}")
    version = data_version(dest)
    if version.tracked_md5 and not version.in_sync:
        raise DataSourceError(
            f"{dest} (md5 {version.md5}) differs from {version.dvc_file} ({version.tracked_md5}); "
            f"remove {dest} and run `trainyard data demo` again, or `dvc checkout {dest}.dvc`"
        )
    print(f"{dest}: md5 {version.md5}" + (" (matches its .dvc file)" if version.tracked_md5 else ""))
    if args.dvc:
        repo = Path.cwd()
        dvc_add(dest, repo)
        dvc_push([f"{dest}.dvc"], repo)
        print(f"{dest} is DVC-tracked ({dest}.dvc) and pushed to the default remote")
    return 0


def _tracker(params: "Params", ping: bool = True) -> "Tracker":
    """The configured tracking store; ``ping``: fail with one clear line when its server is down."""
    from tasks.adapters.mlflow_tracking import Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(params.tracking.uri, params.base_dir)[0])
    if ping:
        tracker.ping()
    return tracker


def _cmd_promote(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.registry import promote, registered_model, resolve_run

    params = load_params(args.params, args.overrides)
    tracker = _tracker(params)
    model = registered_model(params)
    run_id = resolve_run(tracker, model, args.run_id)
    result = promote(tracker, model, run_id, force=args.force)
    print(result.note)
    print(f'load it with  mlflow.pyfunc.load_model("models:/{model}@champion")')
    return 0


def _resolve_run_ref(args: argparse.Namespace) -> None:
    """`trainyard reproduce champion`: an alias of the registered model stands for the run it came from."""
    from tasks.params import load_params
    from tasks.registry import registered_model, resolve_run

    params = load_params(args.params, args.overrides)
    resolved = resolve_run(_tracker(params, ping=False), registered_model(params), args.run_id)
    if resolved != args.run_id:
        print(f"{args.run_id} is run {resolved}")
        args.run_id = resolved


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.registry import looks_like_run_id

    load_params(args.params, args.overrides)
    if not looks_like_run_id(args.run_id):
        _resolve_run_ref(args)
    _flow_session(args.params, "reproduce")
    if args.checkout:
        return _reproduce_in_worktree(args)
    from flows.reproduce import reproduce_flow
    from tasks.redact import hide
    from tasks.reproduce import DIFFERS

    result = reproduce_flow(
        run_id=args.run_id,
        params_path=args.params,
        epochs=args.epochs,
        allow_drift=args.allow_drift,
        overrides=[hide(o) for o in args.overrides],  # no password into Prefect's database
    )
    print()
    print(f"reproduction of {result.original_run_id}: MLflow run {result.run_id}")
    print(f"verdict      {result.verdict.summary()}")
    return REPRODUCTION_DIFFERS if result.verdict.kind == DIFFERS else 0


def _reproduce_in_worktree(args: argparse.Namespace) -> int:
    """Run `trainyard reproduce` again, importing the recorded commit's code from a git worktree."""
    from tasks.adapters.git_dvc import code_root, worktree
    from tasks.params import load_params
    from tasks.repro_key import ReproKey

    tracker = _tracker(load_params(args.params, args.overrides), ping=False)
    commit = ReproKey.from_tags(tracker.get_run(args.run_id).tags, args.run_id).code_commit
    if commit == "none":
        raise UsageError(f"run {args.run_id} was not made from a git checkout; --checkout has no commit to use")
    with worktree(code_root(), commit) as code:
        cmd = [
            sys.executable,
            "-m",
            "flows.cli",
            "reproduce",
            args.run_id,
            "--params",
            str(Path(args.params).resolve()),
        ]
        cmd += [f"--set={o}" for o in args.overrides]
        cmd += (["--epochs", str(args.epochs)] if args.epochs else []) + (["--allow-drift"] if args.allow_drift else [])
        print(f"running the recorded code {commit[:12]} from {code}")
        return subprocess.call(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code)})


def _cmd_serve(args: argparse.Namespace) -> int:
    from tasks.deployments import read_deployments, select

    path = Path(args.file)
    specs = select(read_deployments(path), args.deployment)  # a typo fails here, before Prefect starts
    if args.limit < 1:
        raise UsageError(f"--limit must be 1 or more, not {args.limit}")
    _flow_session(str(path), "serve", background_api=False)  # it is a long-lived process itself
    from flows.serve import build_deployments, serve_file

    for spec in specs:
        when = "; ".join(_describe_schedule(s) for s in spec.schedules) or "on demand"
        print(f"{spec.name:<16} {spec.entrypoint:<34} {when}")
    if args.check:
        build_deployments(path.resolve(), specs)  # imports the flows, checks parameters
        print("ok")
        return 0
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "note: PREFECT_API_URL is not set: serving against a temporary API that ends with this process; "
            "for the UI and lasting history run `prefect server start` and export "
            "PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
    serve_file(path, specs, limit=args.limit)
    return 0


def _describe_schedule(s: dict) -> str:
    if s.get("cron"):
        text = f"cron {s['cron']}" + (f" {s['timezone']}" if s.get("timezone") else "")
    elif s.get("interval"):
        text = f"every {s['interval']} s"
    else:
        text = f"rrule {s['rrule']}"
    return text + ("" if s.get("active", True) else " (inactive)")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from tasks.doctor import exit_code, failures, format_table, run_checks
    from tasks.params import load_params

    params = load_params(args.params, args.overrides)
    checks = run_checks(params)
    print(format_table(checks))
    if all(c.ok for c in checks if c.name == "mlflow"):
        for line in _sync(params):
            print(f"sync  {line}")
    failed = failures(checks)
    if failed:
        print(f"\n{len(failed)} required check(s) failed: {', '.join(c.name for c in failed)}", file=sys.stderr)
        return exit_code(checks)
    print("\nready")
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from tasks.params import load_params

    lines = _sync(load_params(args.params, args.overrides), ping=True)
    for line in lines:
        print(line)
    if not lines:
        print("nothing to sync: no run waits to be finished, none was left RUNNING by a dead process")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from tasks.compare import runs_table
    from tasks.params import load_params

    params = load_params(args.params, args.overrides)
    tracker = _tracker(params)
    runs = tracker.search_runs(params.tracking.experiment, newest_first=True, max_results=max(1, args.n))
    print(runs_table(runs))
    if runs:
        print(f"\nopen         {tracker.run_url(runs[0]).rsplit('/runs/', 1)[0]}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tasks.compare import compare_table
    from tasks.params import load_params

    tracker = _tracker(load_params(args.params, args.overrides))
    runs = [tracker.get_run(run_id) for run_id in args.run_ids]
    print(compare_table(runs))
    print()
    for run in runs:
        print(f"open         {tracker.run_url(run)}")
    return 0


def _sync(params: "Params", ping: bool = False) -> list[str]:
    """Finish journaled runs and mark runs whose owner died KILLED; what was done, one line each."""
    from tasks.run_finish import sync

    tracker = _tracker(params, ping)
    notes: list[str] = []
    report = sync(tracker, params.base_dir, params.tracking.experiment, notes.append)
    return notes + report.lines()


def _cmd_prefect(args: argparse.Namespace) -> int:
    from flows.prefect_api import running_api, stop_api

    if args.action == "status":
        url = running_api()
        print(f"Prefect API {url} (UI {url.removesuffix('/api')})" if url else "no background Prefect API is running")
        return 0
    pid = stop_api()
    print(
        f"stopped the background Prefect API (supervisor pid {pid})" if pid else "no background Prefect API was running"
    )
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from tasks.params import load_params
    from tasks.adapters.mlflow_tracking import default_artifact_root, resolve_tracking_uri

    params = load_params(args.params, args.overrides)
    uri, _ = resolve_tracking_uri(params.tracking.uri, params.base_dir)
    if uri.startswith(("http://", "https://")):
        print(f"runs are on a tracking server: open {uri}")
        return 0
    mlflow = shutil.which(
        "mlflow", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if mlflow is None:
        raise PreflightError("the mlflow command is not installed; run `make venv`")
    import socket

    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as exc:
            raise UsageError(
                f"port {args.port} on {args.host} is taken ({exc.strerror}); pick another: trainyard ui --port 5001"
            ) from None
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port), "--workers", "1"]
    artifacts = default_artifact_root(uri, params.base_dir)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    return _serve_ui(cmd, f"http://{args.host}:{args.port}", uri)


def _serve_ui(cmd: list[str], url: str, store: str) -> int:
    """Run the MLflow UI until Ctrl-C or SIGTERM, which stop it (and its workers) too; say the URL once it answers."""
    import signal
    import time
    import urllib.request

    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: stopped as a whole, by us

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    print(f"MLflow UI on {url} (store {store}); Ctrl-C to stop", flush=True)
                    break
            except OSError:
                time.sleep(0.5)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
