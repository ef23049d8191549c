"""The `sdpo` command line.

    sdpo solve PROBLEM.json [--method auto|sdpo|best-of-k|multi-turn] [--max-attempts N] ...   in-process, no server
    sdpo serve [--host H] [--port P] ...             the HTTP API (each flag is also an SDPO_* variable)
    sdpo worker [--model M] [--max-jobs N] ...       a worker taking jobs from Redis (the same)
    sdpo submit PROBLEM.json [--wait]                submit one problem to the server
    sdpo status ID | sdpo events ID | sdpo curve ID -o FILE.svg
    sdpo batch FILE.jsonl [--concurrency N]          one problem per line, solved as a batch
    sdpo hash-key KEY                                the SHA-256 to configure an API key with
    sdpo verify PROBLEM.json ANSWER.txt              check a verifier spec on a known answer (verdict as JSON)
    sdpo bench discovery | sdpo bench throughput     the benchmarks (see docs/benchmarks.md)

The server-facing commands take --url/--api-key, or SDPO_URL / SDPO_API_KEY.

Heavy imports (torch, transformers) happen inside the commands that need them, so the light client install can
run the server-facing commands.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.methods import DEFAULT_METHOD, METHODS


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# ---- input helpers --------------------------------------------------------------------------------------------
def describe_validation_error(exc: ValidationError, source: str) -> str:
    """One line naming each bad field: 'problem.json: verifier.pattern: ...'."""
    problems = []
    for error in exc.errors()[:3]:
        location = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        problems.append(f"{location or '(root)'}: {error['msg']}")
    more = f" (+{len(exc.errors()) - 3} more)" if len(exc.errors()) > 3 else ""
    return f"{source}: " + "; ".join(problems) + more


def read_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise CLIError(f"{path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise CLIError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc


def load_problem(path: str):
    from sdpo_core.problem import Problem

    try:
        return Problem.model_validate(read_json(path))
    except ValidationError as exc:
        raise CLIError(describe_validation_error(exc, path)) from exc


# Flags that set a RunSettings field (a path into it): their type, choices, help and default come from the field,
# so the help cannot drift from the settings. `sdpo solve` takes them all; `sdpo submit` takes --budget.
SETTINGS_FLAGS: dict[str, tuple[str, ...]] = {
    "--max-attempts": ("max_attempts",),
    "--attempts-per-step": ("attempts_per_step",),
    "--max-new-tokens": ("max_new_tokens",),
    "--seed": ("seed",),
    "--temperature": ("temperature",),
    "--lr": ("sdpo", "learning_rate"),
    "--teacher": ("sdpo", "teacher"),
}


def settings_field(path: tuple[str, ...]):
    """The pydantic FieldInfo at `path` in RunSettings (through its nested models)."""
    from sdpo_core.settings import RunSettings

    model, info = RunSettings, None
    for name in path:
        info = model.model_fields[name]
        model = info.annotation if isinstance(info.annotation, type) else None
    return info


def add_settings_flag(p: argparse.ArgumentParser, flag: str, path: tuple[str, ...]) -> None:
    """`flag` for the RunSettings field at `path`: its type (choices for a Literal), description and default."""
    info = settings_field(path)
    options = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
    kind = None if options else info.annotation
    words = info.description or path[-1].replace("_", " ")
    p.add_argument(flag, type=kind, choices=options, help=f"{words.rstrip('.')} (default {info.default})")


def run_settings_from_args(args: argparse.Namespace):
    """RunSettings from --settings FILE.json overlaid with the explicit flags."""
    from sdpo_core.settings import RunSettings

    data: dict[str, Any] = read_json(args.settings) if args.settings else {}
    if args.method is not None:
        data["method"] = args.method
    if args.full_curve:
        data["stop_at_first_success"] = False
    for flag, path in SETTINGS_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))  # argparse's own name for the flag
        if value is not None:
            node = data
            for name in path[:-1]:
                node[name] = dict(node.get(name, {}))
                node = node[name]
            node[path[-1]] = value
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        raise CLIError(describe_validation_error(exc, "settings")) from exc


# ---- sdpo solve -----------------------------------------------------------------------------------------------
def cmd_solve(args: argparse.Namespace) -> int:
    """Run one problem in-process and compare it with best-of-k."""
    problem = load_problem(args.problem)
    settings = run_settings_from_args(args)
    from rich.console import Console

    from service.solve_local import print_runs, solve_with_baseline

    def answer(results, notes, baseline_so_far: int | None) -> None:  # when the runs end, before the comparison
        console = Console()
        print_runs(results, notes, settings.seed, console)
        if baseline_so_far is not None:
            console.print(f"the best-of-k comparison goes on ({baseline_so_far} samples so far; --no-baseline skips "
                          "it)")

    report = solve_with_baseline(
        problem, settings, model=args.model, baseline_attempts=0 if args.no_baseline else args.baseline_attempts,
        show_progress=not args.json, engine=args.engine, dtype=args.dtype, seeds=args.seeds,
        adapter_samples=args.adapter_samples, on_answer=None if args.json else answer,
    )
    if args.curve:
        Path(args.curve).parent.mkdir(parents=True, exist_ok=True)
        Path(args.curve).write_text(report.svg())
    if args.json:
        print(report.model_dump_json(indent=2, exclude={"svg"}))
    else:
        report.print_summary(curve_path=args.curve, runs_printed=True)
    return 0


def add_method_flag(p: argparse.ArgumentParser) -> None:
    """--method, its choices the registry's (sdpo_core.methods)."""
    p.add_argument("--method", choices=list(METHODS), help="discovery method: " + "; ".join(
        f"{name}: {method.summary}" for name, method in METHODS.items()) + f" (default {DEFAULT_METHOD})")


def add_solve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solve", help="solve one problem in this process (no server)")
    p.add_argument("problem", help="problem JSON file: {prompt | messages, system_prompt?, verifier}")
    add_method_flag(p)
    for flag, path in SETTINGS_FLAGS.items():
        add_settings_flag(p, flag, path)
    p.add_argument("--seeds", type=int, default=1, help="independent runs with seeds seed, seed+1, ...: several "
                   "make the discovery curve an estimate (default 1)")
    p.add_argument("--settings", help="JSON file with RunSettings fields; flags override it")
    p.add_argument("--full-curve", action="store_true", help="keep going after the first solution")
    p.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    add_engine_arguments(p)
    p.add_argument("--baseline-attempts", type=int, default=None,
                   help="most best-of-k samples for the comparison; it stops sooner once its estimate at the "
                   "budget is settled (default: twice the attempt budget; 0 = none)")
    p.add_argument("--no-baseline", action="store_true", help="skip the best-of-k comparison")
    p.add_argument("--adapter-samples", type=int, default=0,
                   help="after each run that distilled, sample this many plain-prompt attempts from its adapter and "
                   "report how many solve: what the adapter learned (default 0: not measured)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    p.add_argument("--curve", help="write the discovery curve against best-of-k to this SVG file")
    p.set_defaults(func=cmd_solve)


# ---- sdpo verify ----------------------------------------------------------------------------------------------
def read_answer(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text()
    except FileNotFoundError as exc:
        raise CLIError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot be read as text ({exc})") from exc


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify one answer the way a job would (sandbox included); exit 0 if solved, 1 if not."""
    problem = load_problem(args.problem)
    answer = read_answer(args.answer)
    from sdpo_core.verification.verify import verify_answer

    verdict = verify_answer(problem, answer)
    print(json.dumps(verdict.model_dump(include={"reward", "solved", "feedback", "answer"}), indent=2))
    return 0 if verdict.solved else 1


def add_verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check a problem's verifier on a known answer before submitting it",
        description="Prints {reward, solved, feedback, answer} as JSON. Exit status: 0 solved, 1 not solved, "
                    "2 bad input.",
    )
    p.add_argument("problem", help="problem JSON file: {prompt | messages, system_prompt?, verifier}")
    p.add_argument("answer", help="text file with the answer to check, as a model would write it ('-' = stdin)")
    p.set_defaults(func=cmd_verify)


# ---- server side: sdpo serve, sdpo worker -----------------------------------------------------------------------
# Their flags are derived from the settings objects (service/config.py, workers/settings.py): every flag is also an
# SDPO_* environment variable, and docs/settings.md lists them all.
def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP API under uvicorn."""
    import uvicorn

    from service.app import create_app
    from service.auth import KeyConfigError
    from service.config import ApiSettings
    from workers import logs

    settings = _settings(ApiSettings, args)
    logs.configure(settings.log_format, settings.log_level)
    try:
        app = create_app(settings)
    except KeyConfigError as exc:
        raise CLIError(str(exc)) from exc
    # uvicorn's own handlers and access log are off: its loggers reach ours, and the app logs one line per request
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1,
                log_config=None, access_log=False)
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    def settings():
        from service.config import ApiSettings

        return ApiSettings

    _add_server_command(sub, "serve", "run the HTTP API", settings, cmd_serve, needs="fastapi")


def _add_server_command(sub: argparse._SubParsersAction, name: str, description: str, settings, func, *,
                        needs: str) -> None:
    """`sdpo serve` and `sdpo worker`: one flag per field of their settings (each also an SDPO_* variable). The
    light client has no server parts (`needs`, a server extra, is not installed): there the command says what to
    install."""
    if importlib.util.find_spec(needs) is None:
        def missing(args: argparse.Namespace) -> int:
            raise CLIError(f"sdpo {name} needs the server parts: pip install 'sdpo-discovery[server,train]'")

        p = sub.add_parser(name, help=description, prefix_chars="\0", add_help=False)  # takes any arguments
        p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
        p.set_defaults(func=missing)
        return
    from workers.settings import add_flags

    p = sub.add_parser(name, help=f"{description} (every flag is also an SDPO_* environment variable)")
    add_flags(p, settings())
    p.set_defaults(func=func)


def _settings(kind, args: argparse.Namespace):
    from pydantic import ValidationError as SettingsError

    from sdpo_core.verification.settings import SettingsInvalid
    from workers.settings import from_flags

    try:
        return from_flags(kind, args)
    except SettingsError as exc:
        raise CLIError(describe_validation_error(exc, "settings")) from exc
    except SettingsInvalid as exc:  # nested settings (the verifier pool's) name the variable themselves
        raise CLIError(f"settings: {exc}") from exc


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM."""
    import asyncio

    from workers import logs
    from workers.checkpoint import CheckpointConfigError, open_store
    from workers.settings import WorkerSettings

    settings = _settings(WorkerSettings, args)
    logs.configure(settings.log_format, settings.log_level)  # before torch and transformers set up their output
    from workers.worker import Worker

    try:
        checkpoints = open_store(settings.checkpoint_location, s3_endpoint_url=settings.s3_endpoint_url)
    except CheckpointConfigError as exc:
        raise CLIError(str(exc)) from exc
    asyncio.run(Worker(settings, checkpoints=checkpoints).run())
    return 0


def add_worker_parser(sub: argparse._SubParsersAction) -> None:
    def settings():
        from workers.settings import WorkerSettings

        return WorkerSettings

    _add_server_command(sub, "worker", "take jobs from Redis and run them on one base model", settings, cmd_worker,
                        needs="redis")


# ---- client side: submit, status, events, curve, batch ------------------------------------------------------------
def _client(args: argparse.Namespace):
    from service.client import Client

    return Client(args.url, args.api_key)


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="server URL (default $SDPO_URL or http://localhost:8000)")
    p.add_argument("--api-key", help="API key (default $SDPO_API_KEY)")


def _job_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.settings:
        options["settings"] = read_json(args.settings)
    for name in ("method", "budget", "model"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.no_baseline:
        options["baselines"] = []
    return options


def _add_job_flags(p: argparse.ArgumentParser) -> None:
    add_method_flag(p)
    add_settings_flag(p, "--budget", ("max_attempts",))
    p.add_argument("--settings", help="JSON file with RunSettings fields")
    p.add_argument("--model", help="base model the job needs (default: the served one)")
    p.add_argument("--no-baseline", action="store_true", help="skip the best-of-k comparison")


def _print_job(job) -> None:
    solved = f", solved at attempt {job.first_success_attempt}" if job.solved else ""
    print(f"{job.id}  {job.status}  {job.attempts}/{job.budget} attempts{solved}")
    if job.error:
        print(f"  error {job.error.code}: {job.error.message}")


def cmd_submit(args: argparse.Namespace) -> int:
    """Submit a problem; with --wait, follow it to the end."""
    problem = load_problem(args.problem)
    with _client(args) as client:
        job = client.submit(problem, **_job_options(args))
        if args.wait:
            job = client.wait(job.id, progress=not args.json)
    print(job.model_dump_json(indent=2)) if args.json else _print_job(job)
    return 0 if job.status != "failed" else 1


def add_submit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit one problem to the server")
    p.add_argument("problem", help="problem JSON file")
    _add_job_flags(p)
    p.add_argument("--wait", action="store_true", help="wait for the job to finish, with a progress bar")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    _add_connection_flags(p)
    p.set_defaults(func=cmd_submit)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get(args.id)
    print(job.model_dump_json(indent=2)) if args.json else _print_job(job)
    return 0


def add_status_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show a job")
    p.add_argument("id", help="job id")
    p.add_argument("--json", action="store_true", help="print the job as JSON")
    _add_connection_flags(p)
    p.set_defaults(func=cmd_status)


def cmd_events(args: argparse.Namespace) -> int:
    """Follow a job's events (SSE) until it ends, one JSON line each."""
    with _client(args) as client:
        for event in client.events(args.id, last_event_id=args.last_event_id):
            print(json.dumps({"id": event.id, "type": event.type, **event.data}), flush=True)
    return 0


def add_events_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("events", help="follow a job's events until it ends")
    p.add_argument("id", help="job id")
    p.add_argument("--last-event-id", help="resume after this event id")
    _add_connection_flags(p)
    p.set_defaults(func=cmd_events)


def cmd_curve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        svg = client.curve_svg(args.id)
        note = client.curve(args.id).comparison.note
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(svg)
    print(f"{note}\ncurve written to {args.output}")
    return 0


def add_curve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curve", help="save a finished job's discovery curve as SVG")
    p.add_argument("id", help="job id")
    p.add_argument("-o", "--output", required=True, help="SVG file to write")
    _add_connection_flags(p)
    p.set_defaults(func=cmd_curve)


def read_problems_jsonl(path: str) -> list[Any]:
    from sdpo_core.problem import Problem

    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError as exc:
        raise CLIError(f"{path}: no such file") from exc
    problems = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            problems.append(Problem.model_validate_json(line))
        except ValidationError as exc:
            raise CLIError(describe_validation_error(exc, f"{path}:{number}")) from exc
    if not problems:
        raise CLIError(f"{path}: no problems (one JSON object per line)")
    return problems


def cmd_batch(args: argparse.Namespace) -> int:
    """Solve a JSONL file of problems as one batch; print one line per problem and the batch curve."""
    problems = read_problems_jsonl(args.file)
    with _client(args) as client:
        batch = client.submit_batch(problems, concurrency=args.concurrency, **_job_options(args))
        print(f"batch {batch.id}: {len(batch.job_ids)} jobs", flush=True)
        if not args.no_wait:
            batch = client.wait_batch(batch.id)
            for job_id in batch.job_ids:
                _print_job(client.get(job_id))
            if args.curve and batch.curve:
                from sdpo_core.measure.plot import discovery_svg

                Path(args.curve).write_text(discovery_svg(batch.curve.curves, title=f"Batch {batch.id}",
                                                          note=batch.curve.note))
            print(batch.curve.note if batch.curve else f"no finished jobs: {batch.counts}")
    return 0


def add_batch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="solve a JSONL file of problems as one batch")
    p.add_argument("file", help="one problem JSON per line")
    _add_job_flags(p)
    p.add_argument("--concurrency", type=int, help="jobs of the batch run at once (default all)")
    p.add_argument("--no-wait", action="store_true", help="print the batch id and return")
    p.add_argument("--curve", help="write the batch's average discovery curve to this SVG file")
    _add_connection_flags(p)
    p.set_defaults(func=cmd_batch)


def cmd_hash_key(args: argparse.Namespace) -> int:
    from service.auth import hash_key

    print(hash_key(args.key))
    return 0


def add_hash_key_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("hash-key", help="print the SHA-256 of an API key for SDPO_API_KEYS / the keys file")
    p.add_argument("key")
    p.set_defaults(func=cmd_hash_key)


# ---- entry point ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdpo", description="Test-time discovery with SDPO on a per-problem LoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    from service.bench_commands import add_bench_parser

    for add in (add_solve_parser, add_verify_parser, add_serve_parser, add_worker_parser, add_submit_parser, add_status_parser,
                add_events_parser, add_curve_parser, add_batch_parser, add_hash_key_parser, add_bench_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"sdpo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a known failure (the server said no, the model is missing) gets one line
        from sdpo_core.engine_choice import EngineNotAvailable
        from sdpo_core.models import ModelNotAvailable, UnknownDtype
        from sdpo_core.verification.isolation import SandboxUnavailable
        from sdpo_core.verification.settings import SettingsInvalid
        from service.client import SDPOError

        if isinstance(exc, ModelNotAvailable | SDPOError | SandboxUnavailable | EngineNotAvailable | UnknownDtype
                      | SettingsInvalid):
            print(f"sdpo: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, ValidationError):  # job options (--settings, flags) the client could not accept
            print(f"sdpo: error: {describe_validation_error(exc, 'job options')}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
