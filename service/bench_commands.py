"""`sdpo bench discovery` and `sdpo bench throughput`: the product's two promises, measured."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.methods import METHODS


def _serving(args, runs: int):
    """The model and engine the bench flags name (a random-init model for --shape), with one adapter slot for
    each of the `runs` that share generation batches (sdpo_core.serving.adapter_slots)."""
    from sdpo_core.serving import EngineSettings, adapter_slots, load_serving, serve_policy

    settings = EngineSettings.from_args(args, max_adapters=adapter_slots(runs))
    if not getattr(args, "shape", None):
        return load_serving(settings)
    import torch

    from sdpo_core.measure.synthetic import shaped_model
    from sdpo_core.models import choose_dtype
    from sdpo_core.policy import LoraPolicy

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tokenizer = shaped_model(args.shape, device=device, dtype=getattr(torch, choose_dtype(device, args.dtype)))
    return serve_policy(LoraPolicy(model, tokenizer), settings, model_name=f"random-init {args.shape}",
                        resolved_model=None)


def cmd_bench_discovery(args: argparse.Namespace) -> int:
    from sdpo_core.measure.discovery import bench_discovery, family_name, load_problems
    from sdpo_core.measure.trace import parse_variant
    from sdpo_core.settings import RunSettings
    from sdpo_core.verification.verify import verify_function

    methods = args.methods.split(",")
    variants = dict(parse_variant(v) for v in args.variant or [])
    methods += [name for name in variants if name not in methods]
    by_feedbacks = args.max_prompt_tokens.startswith("feedbacks:")
    settings = RunSettings(max_attempts=args.budget, attempts_per_step=args.attempts_per_step,
                           max_new_tokens=args.max_new_tokens,
                           max_prompt_tokens=4096 if by_feedbacks else int(args.max_prompt_tokens))
    serving = _serving(args, runs=args.concurrency)  # runs at once
    policy, engine, label = serving.policy, serving.engine, serving.model_name
    baseline = args.baseline_samples or args.budget * args.seeds
    console = Console(width=220)
    for family in args.problems.split(","):
        problems = load_problems(family)
        name = family_name(family)
        with Progress(TextColumn(f"[bold]discovery bench: {name}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("steps"), TimeElapsedColumn(), console=Console(stderr=True),
                      disable=args.quiet) as progress:
            task = progress.add_task("steps", total=None)
            report = bench_discovery(
                problems, policy, engine, methods=methods, seeds=args.seeds, settings=settings,
                baseline_samples=baseline, concurrency=args.concurrency, family=name, variants=variants,
                verify_for=verify_function, on_progress=lambda task=task: progress.advance(task),
                against=args.against.split(",") if args.against else (),
                context_feedbacks=int(args.max_prompt_tokens.split(":")[1]) if by_feedbacks else None,
            )
        out = Path(args.out) / name if "," in args.problems else Path(args.out)
        report.write(out)
        print_discovery_report(console, report, label)
        console.print(f"written: {out}/discovery.json, discovery.svg and one SVG per problem")
    return 0


def context_label(report) -> str:
    if report.context_feedbacks is not None:
        return f"holds {report.context_feedbacks} feedback(s) per problem"
    return f"{report.max_prompt_tokens} tokens"


def print_discovery_report(console: Console, report, label: str) -> None:
    """Per problem P@budget and mean attempts; averaged: mean costs and matched ratios with their intervals."""
    budget = report.budget
    table = Table(title=f"discovery on {report.family}: {len(report.problems)} problems x {report.seeds} seeds, "
                        f"budget {budget}, context {context_label(report)} ({label}); P@{budget} / mean attempts "
                        "to the first success")
    table.add_column("problem")
    for m in report.methods:
        table.add_column(m, justify="right")
    for p in report.problems:
        table.add_row(p.problem_id, *(f"{p.outcomes[m].discovery(budget)(budget):.2f} / "
                                      f"{p.mean_cost[m]['attempts']:.1f}" for m in report.methods))
    table.add_row("[bold]average", *(f"{c.mean[-1]:.2f} / {report.mean_cost[c.label]['attempts']:.1f}"
                                     for c in report.average_curves))
    console.print(table)
    ratios = Table(title=f"{report.family}: cost to reach best-of-k's P@{budget}, ratio best-of-k / method "
                         "(90% bootstrap interval over problems); mean cost to the first success")
    for col in ("method", "attempts", "seconds", "tokens", "mean attempts", "mean seconds", "mean tokens"):
        ratios.add_column(col, justify="left" if col == "method" else "right")

    def show(r) -> str:
        if r.value is None:
            return "-"
        return f"{r.value:.2f}x" + (f" [{r.ci[0]:.2f}, {r.ci[1]:.2f}]" if r.ci else "")

    for m in report.methods:
        per_axis = report.ratios.get(m)
        cost = report.mean_cost[m]
        ratios.add_row(m, *(show(per_axis[a]) if per_axis else "1" for a in ("attempts", "seconds", "tokens")),
                       f"{cost['attempts']:.1f}", f"{cost['seconds']:.1f}", f"{cost['tokens']:.0f}")
    console.print(ratios)
    for reference, table in report.ratios_against.items():
        against = Table(title=f"{report.family}: cost to reach {reference}'s P@{budget}, ratio {reference} / method "
                              "(90% bootstrap interval over problems)")
        for col in ("method", "attempts", "seconds", "tokens"):
            against.add_column(col, justify="left" if col == "method" else "right")
        for m, per_axis in table.items():
            against.add_row(m, *(show(per_axis[a]) for a in ("attempts", "seconds", "tokens")))
        console.print(against)
    console.print(report.note)


def cmd_bench_signal(args: argparse.Namespace) -> int:
    from sdpo_core.measure.discovery import load_problems
    from sdpo_core.measure.signal import measure_signal
    from sdpo_core.verification.verify import verify_function

    problems = load_problems(args.problems)
    serving = _serving(args, runs=1)  # samples the base model only
    policy, engine, label = serving.policy, serving.engine, serving.model_name
    console = Console(width=200)
    table = Table(title=f"feedback signal: {label}, {args.samples} samples per problem, {args.max_new_tokens} new tokens")
    for col in ("problem", "base pass@1", "with feedback", "all told", "KL fb", "KL contrast", "peak", "shift fb",
                "shift fb-ctrl"):
        table.add_column(col, justify="right" if col != "problem" else "left")
    rows = []
    with Progress(TextColumn("[bold]signal"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=args.quiet) as progress:
        task = progress.add_task("problems", total=len(problems))
        for problem in problems:
            signal = measure_signal(problem, policy, engine, verify=verify_function(problem), samples=args.samples,
                                    feedback_samples=args.feedback_samples, gap_attempts=args.gap_attempts,
                                    max_new_tokens=args.max_new_tokens)
            rows.append(signal)
            if args.json:  # written as it goes: a long report is readable before it ends
                Path(args.json).write_text(json.dumps([r.model_dump() for r in rows], indent=2))
            table.add_row(signal.problem_id, f"{signal.base_solved}/{signal.samples} = {signal.base_rate:.3f}",
                          f"{signal.feedback_solved}/{signal.feedback_samples} = {signal.feedback_rate:.3f}",
                          "-" if signal.all_told_rate is None else
                          f"{signal.all_told_solved}/{signal.all_told_samples} = {signal.all_told_rate:.3f}",
                          f"{signal.gap_feedback:.3f}", f"{signal.gap_contrastive:.3f}",
                          f"{signal.peak_contrastive:.2f}", f"{signal.shift_feedback:+.3f}",
                          f"{signal.shift_contrastive:+.3f}")
            progress.advance(task)
    console.print(table)
    console.print("all told: pass@1 with every requirement in the prompt at once ('-': the verifier cannot state "
                  "them); KL: mean per-token KL(teacher || student) on failed base attempts, nats; peak: the largest "
                  "per-token KL of an attempt, averaged; shift: mean per-token log-prob change of the failed "
                  "attempt's own tokens (positive: the teacher copies it)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.model_dump() for r in rows], indent=2))
    return 0


# The shipped settings against the paper's test-time loss and teacher (at the LoRA learning rate) and the plain
# feedback teacher with our forward KL: what `sdpo bench trace` compares when no --variant is given.
DEFAULT_VARIANTS = ("default=", "paper=alpha:1,top_k:20,teacher:ema,teacher_context:feedback",
                    "fkl-full=teacher_context:feedback")


def cmd_bench_trace(args: argparse.Namespace) -> int:
    from sdpo_core.measure.discovery import load_problems
    from sdpo_core.measure.trace import parse_variant, trace
    from sdpo_core.verification.verify import verify_function

    problems = load_problems(args.problems)
    variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))
    serving = _serving(args, runs=len(problems) * len(variants))  # every variant of every problem at once
    policy, engine, label = serving.policy, serving.engine, serving.model_name
    with Progress(TextColumn("[bold]trace"), BarColumn(), MofNCompleteColumn(), TextColumn("updates"),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=args.quiet) as progress:
        task = progress.add_task("updates", total=args.updates + 2)
        traces = trace(problems, policy, engine, variants=variants, updates=args.updates, attempts=args.attempts,
                       eval_samples=args.eval_samples, max_new_tokens=args.max_new_tokens,
                       verify_for=verify_function, on_progress=lambda: progress.advance(task))
    console = Console(width=220)
    steps = range(args.updates + 1)
    table = Table(title=f"plain-prompt pass@1 after each update ({label}; {args.attempts} attempts per update, "
                        f"{args.eval_samples} eval samples; meta-talk share / distinct-2 at the last update)")
    table.add_column("problem")
    table.add_column("variant")
    table.add_column("with fb", justify="right")
    for u in steps:
        table.add_column(f"u{u}", justify="right")
    table.add_column("train solved", justify="right")
    table.add_column("meta", justify="right")
    table.add_column("distinct2 (base)", justify="right")
    for t in traces:
        last = t.steps[-1]
        table.add_row(t.problem_id, t.variant, f"{t.feedback_rate:.2f}", *(f"{s.eval_rate:.2f}" for s in t.steps),
                      ",".join(str(s.train_solved) for s in t.steps[1:]), f"{last.meta_talk:.2f}",
                      f"{last.distinct2:.2f} ({t.base_distinct2:.2f})")
    for name in variants:
        mine = [t for t in traces if t.variant == name]
        mean = [sum(t.steps[u].eval_rate for t in mine) / len(mine) for u in steps]
        table.add_row("[bold]average", name, f"{sum(t.feedback_rate for t in mine) / len(mine):.2f}",
                      *(f"{m:.2f}" for m in mean), "", f"{sum(t.steps[-1].meta_talk for t in mine) / len(mine):.2f}",
                      f"{sum(t.steps[-1].distinct2 for t in mine) / len(mine):.2f}")
    console.print(table)
    if any(t.steps[0].requirement_rates for t in traces):
        console.print(requirement_table(traces, steps))
    if args.json:
        Path(args.json).write_text(json.dumps([t.model_dump() for t in traces], indent=2))
    return 0


def requirement_table(traces, steps) -> Table:
    """Per checklist problem and variant: each requirement's plain-prompt rate after each update (* once the
    training feedback has named it), and how much of its peak the first requirement keeps at the end."""
    table = Table(title="per requirement: plain-prompt pass rate of each check after each update (* named by the "
                        "training feedback by then); r1 kept = r1's last rate / its peak after the next was named")
    table.add_column("problem")
    table.add_column("variant")
    for u in steps:
        table.add_column(f"u{u}", justify="right")
    table.add_column("r1 kept", justify="right")
    for t in traces:
        if not t.steps[0].requirement_rates:
            continue
        cells = [" ".join(f"{rate:.2f}{'*' if seen else ''}" for rate, seen in zip(s.requirement_rates, s.revealed))
                 for s in t.steps]
        kept = first_requirement_kept(t)
        table.add_row(t.problem_id, t.variant, *cells, "-" if kept is None else f"{kept:.2f}")
    return table


def first_requirement_kept(trace) -> float | None:
    """Requirement 1's rate at the last update over its peak, once requirement 2 has been named (None before, or
    when requirement 1 never passed)."""
    named = next((i for i, s in enumerate(trace.steps) if len(s.revealed) > 1 and s.revealed[1]), None)
    if named is None:
        return None
    peak = max(s.requirement_rates[0] for s in trace.steps)
    return trace.steps[-1].requirement_rates[0] / peak if peak > 0 else None


def cmd_bench_throughput(args: argparse.Namespace) -> int:
    from sdpo_core.measure.throughput import bench_throughput

    serving = _serving(args, runs=max(int(c) for c in args.concurrency.split(",")))
    policy, engine, label = serving.policy, serving.engine, serving.model_name
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


def add_sampling_arguments(p: argparse.ArgumentParser, writes: str) -> None:
    """The flags `bench signal` and `bench trace` share: how attempts are sampled, and where the JSON goes."""
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-batch-size", type=int, default=64)
    add_engine_arguments(p)
    p.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    p.add_argument("--json", help=f"also write {writes} as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: discovery against best-of-k, and throughput")
    kinds = bench.add_subparsers(dest="bench", required=True)

    d = kinds.add_parser("discovery", help="methods vs best-of-k per attempt, second and token, several seeds")
    d.add_argument("--problems", default="informative,binary", help="built-in families (informative, binary, accumulate) or "
                   "JSONL files, comma-separated; each is reported on its own")
    d.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    d.add_argument("--variant", action="append", help="NAME=key:value,... an SDPO variant as one more method "
                   "(values JSON; method:auto to vary auto's settings), e.g. fkl=alpha:0,top_k:none")
    d.add_argument("--seeds", type=int, default=3, help="independent runs per sequential method and problem")
    d.add_argument("--budget", type=int, default=64, help="attempt budget per run")
    d.add_argument("--attempts-per-step", type=int, default=8)
    d.add_argument("--max-new-tokens", type=int, default=64)
    d.add_argument("--max-prompt-tokens", default="4096", help="the context budget of the in-context methods' "
                   "prompt: the oldest feedback is dropped beyond it; a number of tokens, or 'feedbacks:N' for a "
                   "budget per problem that holds N of its feedbacks")
    d.add_argument("--against", default="", help="more references for the matched ratios, comma-separated "
                   "methods (e.g. multi-turn,multi-turn-fifo: the in-context arms the learning is judged against)")
    d.add_argument("--baseline-samples", type=int, default=0, help="best-of-k samples per problem (default budget x seeds)")
    d.add_argument("--concurrency", type=int, default=8, help="runs sharing generation batches")
    d.add_argument("--max-batch-size", type=int, default=64)
    d.add_argument("--model", help="HF id or local folder (default: the offline smollm2-135m-instruct)")
    add_engine_arguments(d)
    d.add_argument("--out", default="runs/bench-discovery", help="folder for discovery.json and the SVGs")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_bench_discovery)

    g = kinds.add_parser("signal", help="per problem: base pass@1, pass@1 with the feedback in the prompt, and the "
                         "student-teacher gap on base attempts")
    g.add_argument("--problems", help="a family (informative, binary, accumulate) or a JSONL of problems (default: informative)",
                   default="informative")
    g.add_argument("--samples", type=int, default=64, help="plain-prompt attempts per problem (base pass@1)")
    g.add_argument("--feedback-samples", type=int, default=None, help="attempts with the feedback in the prompt "
                   "(default: --samples)")
    g.add_argument("--gap-attempts", type=int, default=16, help="failed base attempts the gap is measured on")
    add_sampling_arguments(g, writes="the rows")
    g.set_defaults(func=cmd_bench_signal)

    r = kinds.add_parser("trace", help="the student's plain-prompt pass@1 after each SDPO update, per variant")
    r.add_argument("--problems", default="informative", help="a family (informative, binary, accumulate) or a JSONL of problems")
    r.add_argument("--variant", action="append", help="NAME=key:value,... SDPO settings overrides (repeatable; "
                   "values are JSON, 'none' is None), e.g. fkl=alpha:0,top_k:none")
    r.add_argument("--updates", type=int, default=6)
    r.add_argument("--attempts", type=int, default=8, help="training attempts per update")
    r.add_argument("--eval-samples", type=int, default=16, help="plain-prompt attempts after each update")
    add_sampling_arguments(r, writes="the traces")
    r.set_defaults(func=cmd_bench_trace)

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

