"""`sdpo bench discovery` and `sdpo bench throughput`: the product's two promises, measured."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdpo_core.engines import add_engine_arguments


def _engine(policy, args):
    from sdpo_core.engines import make_engine

    concurrency = max(int(c) for c in str(args.concurrency).split(","))
    return make_engine(policy, args.model_path, args.engine, max_batch_size=args.max_batch_size,
                       max_adapters=max(16, concurrency), compile=getattr(args, "compile", False))


def _policy(args):
    from sdpo_core.models import load_model_and_tokenizer, resolve_model
    from sdpo_core.policy import LoraPolicy

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="peft")
    if getattr(args, "shape", None):
        import torch

        from sdpo_core.synthetic import shaped_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        from sdpo_core.models import choose_dtype

        model, tokenizer = shaped_model(args.shape, device=device, dtype=getattr(torch, choose_dtype(device, args.dtype)))
        args.model_path, label = None, f"random-init {args.shape}"
    else:
        model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
        args.model_path, label = resolve_model(args.model), args.model or "smollm2-135m-instruct"
    return LoraPolicy(model, tokenizer), label


def cmd_bench_discovery(args: argparse.Namespace) -> int:
    from sdpo_core.bench_discovery import bench_discovery, load_problems
    from sdpo_core.settings import RunSettings
    from workers.verification import verify_function

    problems = load_problems(args.problems)
    methods = args.methods.split(",")
    settings = RunSettings(max_attempts=args.budget, attempts_per_step=args.attempts_per_step,
                           max_new_tokens=args.max_new_tokens)
    policy, label = _policy(args)
    engine = _engine(policy, args)
    baseline = args.baseline_samples or args.budget * args.seeds
    total_runs = sum(1 if m == "best-of-k" else args.seeds for m in methods) * len(problems)
    with Progress(TextColumn("[bold]discovery bench"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=args.quiet) as progress:
        task = progress.add_task("steps", total=None)
        report = bench_discovery(
            problems, policy, engine, methods=methods, seeds=args.seeds, settings=settings,
            baseline_samples=baseline, concurrency=args.concurrency,
            verify_for=verify_function, on_progress=lambda: progress.advance(task),
        )
    report.write(Path(args.out))
    console = Console(width=200)
    table = Table(title=f"discovery bench: {len(problems)} problems x {args.seeds} seeds, budget {args.budget} "
                        f"({label}, {total_runs} runs)")
    table.add_column("problem")
    for m in methods:
        table.add_column(f"{m} P@budget", justify="right")
        table.add_column(f"{m} mean attempts", justify="right")
    table.add_column("ratio", justify="right")
    for p in report.problems:
        cells = []
        for m in methods:
            cells += [f"{p.outcomes[m].discovery(args.budget)(args.budget):.2f}", f"{p.mean_attempts[m]:.0f}"]
        table.add_row(p.problem_id, *cells, f"{p.attempts_ratio:.2f}" if p.attempts_ratio else "-")
    cells = []
    for curve in report.average_curves:
        cells += [f"{curve.mean[-1]:.2f}", f"{report.mean_attempts[curve.label]:.0f}"]
    table.add_row("[bold]average", *cells, f"{report.attempts_ratio:.2f}" if report.attempts_ratio else "-")
    console.print(table)
    console.print(report.note)
    console.print(f"written: {args.out}/discovery.json, discovery.svg and one SVG per problem")
    return 0


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from sdpo_core.bench_throughput import bench_throughput

    policy, label = _policy(args)
    engine = _engine(policy, args)
    console = Console(width=200)
    report = bench_throughput(
        policy, engine, model_name=label, concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        attempts_per_step=args.attempts_per_step, max_new_tokens=args.max_new_tokens, steps=args.steps,
        on_row=lambda r: console.print(f"  measured C={r.concurrency} {r.method}: {r.attempts_per_s:.2f} attempts/s",
                                       highlight=False),
    )
    table = Table(title=f"throughput: {label} on {report.device}, bandwidth {report.bandwidth_gb_s:.0f} GB/s")
    for col in ("C", "method", "attempts/s", "tokens/s", "s/step", "decode ms/step", "floor ms", "x floor",
                "update s/step", "publish ms", "stack ms"):
        table.add_column(col, justify="right")

    def f(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in report.rows:
        over = r.decode_ms_per_step / r.decode_floor_ms if r.decode_ms_per_step and r.decode_floor_ms else None
        table.add_row(str(r.concurrency), r.method, f(r.attempts_per_s, ".2f"), f(r.tokens_per_s, ".0f"),
                      f(r.seconds_per_step, ".2f"), f(r.decode_ms_per_step, ".2f"), f(r.decode_floor_ms, ".3f"),
                      f(over, ".1f"), f(r.update_s_per_step, ".2f"), f(r.publish_ms, ".1f"), f(r.stack_ms, ".1f"))
    console.print(table)
    levels = sorted({r.concurrency for r in report.rows})
    for c in levels:
        console.print(f"SDPO / best-of-k wall time per attempt at C={c}: {report.ratio(c):.2f}x")
    console.print(f"attempts/s at C={levels[-1]} over C={levels[0]}: best-of-k {report.scaling('best-of-k'):.1f}x, "
                  f"sdpo {report.scaling('sdpo'):.1f}x")
    if args.json:
        Path(args.json).write_text(report.model_dump_json(indent=2))
    return 0


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: discovery against best-of-k, and throughput")
    kinds = bench.add_subparsers(dest="bench", required=True)

    d = kinds.add_parser("discovery", help="SDPO vs best-of-k vs multi-turn on a problem set, several seeds")
    d.add_argument("--problems", help="JSONL of problems (default: the built-in set, hard for the default model)")
    d.add_argument("--methods", default="sdpo,best-of-k,multi-turn")
    d.add_argument("--seeds", type=int, default=3, help="independent runs per sequential method and problem")
    d.add_argument("--budget", type=int, default=64, help="attempt budget per run")
    d.add_argument("--attempts-per-step", type=int, default=8)
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--baseline-samples", type=int, default=0, help="best-of-k samples per problem (default budget x seeds)")
    d.add_argument("--concurrency", type=int, default=8, help="runs sharing generation batches")
    d.add_argument("--max-batch-size", type=int, default=64)
    d.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    add_engine_arguments(d)
    d.add_argument("--out", default="runs/bench-discovery", help="folder for discovery.json and the SVGs")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_bench_discovery)

    t = kinds.add_parser("throughput", help="attempts/s, decode vs memory floor, update and swap costs")
    t.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    t.add_argument("--shape", choices=["smollm2-135m", "qwen3-0.6b", "qwen3-8b"], help="random-init model of a shape")
    add_engine_arguments(t)
    t.add_argument("--concurrency", default="1,4,16", help="concurrent problems, comma-separated")
    t.add_argument("--attempts-per-step", type=int, default=16)
    t.add_argument("--max-new-tokens", type=int, default=128)
    t.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    t.add_argument("--max-batch-size", type=int, default=64)
    t.add_argument("--compile", action="store_true", help="transformers engine: torch.compile the decode step "
                   "(CUDA graphs on a GPU; slower on a CPU)")
    t.add_argument("--json", help="also write the report as JSON here")
    t.set_defaults(func=cmd_bench_throughput)

