"""The `sdpo` command line.

    sdpo solve PROBLEM.json [--method sdpo|best-of-k|multi-turn] [--max-attempts N] ...   in-process, no server
    sdpo verify PROBLEM.json ANSWER.txt      check a verifier spec on a known answer; prints the verdict as JSON

Heavy imports (torch, transformers) happen inside the commands that need them, so the light client install can
run the server-facing commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError


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


def run_settings_from_args(args: argparse.Namespace):
    """RunSettings from --settings FILE.json overlaid with the explicit flags."""
    from sdpo_core.settings import RunSettings

    data: dict[str, Any] = read_json(args.settings) if args.settings else {}
    for flag, field in [("method", "method"), ("max_attempts", "max_attempts"),
                        ("attempts_per_step", "attempts_per_step"), ("max_new_tokens", "max_new_tokens"),
                        ("seed", "seed"), ("temperature", "temperature")]:
        if getattr(args, flag) is not None:
            data[field] = getattr(args, flag)
    if args.full_curve:
        data["stop_at_first_success"] = False
    sdpo = dict(data.get("sdpo", {}))
    for flag, field in [("lr", "learning_rate"), ("teacher", "teacher")]:
        if getattr(args, flag) is not None:
            sdpo[field] = getattr(args, flag)
    data["sdpo"] = sdpo
    try:
        return RunSettings.model_validate(data)
    except ValidationError as exc:
        raise CLIError(describe_validation_error(exc, "settings")) from exc


# ---- sdpo solve -----------------------------------------------------------------------------------------------
def cmd_solve(args: argparse.Namespace) -> int:
    """Run one problem in-process and compare it with best-of-k."""
    problem = load_problem(args.problem)
    settings = run_settings_from_args(args)
    from service.solve_local import solve_with_baseline

    report = solve_with_baseline(
        problem, settings, model=args.model, baseline_attempts=args.baseline_attempts, show_progress=not args.json,
    )
    if args.curve:
        Path(args.curve).parent.mkdir(parents=True, exist_ok=True)
        Path(args.curve).write_text(report.svg())
    if args.json:
        print(report.model_dump_json(indent=2, exclude={"svg"}))
    else:
        report.print_summary(curve_path=args.curve)
    return 0


def add_solve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solve", help="solve one problem in this process (no server)")
    p.add_argument("problem", help="problem JSON file: {prompt | messages, system_prompt?, verifier}")
    p.add_argument("--method", choices=["sdpo", "best-of-k", "multi-turn"], help="discovery method (default sdpo)")
    p.add_argument("--max-attempts", type=int, help="attempt budget (default 256)")
    p.add_argument("--attempts-per-step", type=int, help="attempts sampled per step (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="longest attempt in tokens (default 256)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 1.0)")
    p.add_argument("--lr", type=float, help="LoRA learning rate for sdpo")
    p.add_argument("--teacher", choices=["ema", "frozen", "trust-region"], help="self-teacher for sdpo")
    p.add_argument("--settings", help="JSON file with RunSettings fields; flags override it")
    p.add_argument("--full-curve", action="store_true", help="keep going after the first solution")
    p.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    p.add_argument("--baseline-attempts", type=int, default=None,
                   help="best-of-k samples for the comparison (default: the attempt budget; 0 = none)")
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
    from workers.verification import verify_answer

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


# ---- entry point ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdpo", description="Test-time discovery with SDPO on a per-problem LoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_solve_parser(sub)
    add_verify_parser(sub)
    from service.bench_commands import add_bench_parser

    add_bench_parser(sub)
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
    except Exception as exc:  # a known failure mode of a dependency gets one line, not a traceback
        from sdpo_core.models import ModelNotAvailable

        if isinstance(exc, ModelNotAvailable):
            print(f"sdpo: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
