"""`sdpo solve`: one problem in this process, its discovery curve against best-of-k, a rich progress bar."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdpo_core.discovery import Comparison, compare_to_best_of_k, default_baseline_samples
from sdpo_core.measure.plot import discovery_svg
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ProgressEvent, RunResult
from sdpo_core.settings import RunSettings


class SolveReport(BaseModel):
    """What `sdpo solve` prints: the run, the best-of-k baseline and their comparison."""

    problem_id: str | None
    model: str
    settings: RunSettings
    result: RunResult
    baseline: RunResult | None
    comparison: Comparison

    def svg(self) -> str:
        title = f"Discovery: {self.problem_id or 'problem'} ({self.model})"
        return discovery_svg(self.comparison.curves, title=title, note=self.comparison.note)

    def print_summary(self, curve_path: str | None = None, console: Console | None = None) -> None:
        console = console or Console()
        r = self.result
        verdict = f"[green]solved at attempt {r.first_success_attempt}[/]" if r.solved else f"[red]{r.status}[/]"
        console.print(f"[bold]{r.method}[/]: {verdict} after {len(r.attempts)} attempts in {r.steps} steps")
        if r.solution is not None:
            console.print("[bold]solution:[/]")
            console.print(r.solution, markup=False, highlight=False)
        table = Table(title=f"discovery@k (budget {self.comparison.budget})")
        table.add_column("k", justify="right")
        for curve in self.comparison.curves:
            table.add_column(curve.label, justify="right")
        for k in sorted({1, 4, 16, 64, 256, 1024, self.comparison.budget}):
            if k <= self.comparison.budget:
                table.add_row(str(k), *(f"{c.at(k):.3f}" for c in self.comparison.curves))
        console.print(table)
        console.print(self.comparison.note)
        if curve_path:
            console.print(f"curve written to {curve_path}")


@contextmanager
def progress_sink(label: str, total: int, enabled: bool) -> Iterator[EventSink]:
    """A rich progress bar (attempts, step, best reward, solved) fed by the loop's events."""
    if not enabled:
        yield lambda event: None
        return
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("attempts"),
        TextColumn("step {task.fields[step]}"), TextColumn("best reward {task.fields[best]:.2f}"),
        TextColumn("{task.fields[solved]}"), TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total, step=0, best=0.0, solved="")

        def on_event(event: ProgressEvent) -> None:
            solved = f"[green]solved @ {event.first_success_attempt}[/]" if event.solved else ""
            progress.update(task, completed=event.attempts, step=event.step, best=event.best_reward, solved=solved)

        yield on_event


def solve_with_baseline(
    problem: Problem, settings: RunSettings, *, model: str | None, baseline_attempts: int | None,
    show_progress: bool = True, engine: str | None = None, dtype: str | None = None,
) -> SolveReport:
    """Run the method, then best-of-k samples of the frozen model, and compare them (on `engine`, see
    sdpo_core.engines; weights in `dtype`, see sdpo_core.models.choose_dtype)."""
    from sdpo_core.engines import make_engine
    from sdpo_core.loop import solve
    from sdpo_core.models import DEFAULT_MODEL, load_model_and_tokenizer, resolve_model
    from sdpo_core.policy import LoraPolicy
    from workers.verification import verify_function

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="peft")
    base_model, tokenizer = load_model_and_tokenizer(model, dtype=dtype)
    policy = LoraPolicy(base_model, tokenizer)
    engine = make_engine(policy, resolve_model(model), engine)
    verify = verify_function(problem)

    with progress_sink(settings.method, settings.max_attempts, show_progress) as on_event:
        result = solve(problem, settings, policy, engine, verify=verify, on_event=on_event)

    baseline = None
    n_baseline = default_baseline_samples(settings.max_attempts) if baseline_attempts is None else baseline_attempts
    if settings.method == "best-of-k" and not settings.stop_at_first_success:
        baseline = result  # a full best-of-k run is its own baseline
    elif n_baseline > 0:
        baseline_settings = settings.model_copy(update={
            "method": "best-of-k", "max_attempts": max(n_baseline, settings.attempts_per_step),
            "stop_at_first_success": False,
        })
        with progress_sink("best-of-k baseline", baseline_settings.max_attempts, show_progress) as on_event:
            baseline = solve(problem, baseline_settings, policy, engine, verify=verify, on_event=on_event,
                             name="baseline")
    outcomes = [a.solved for a in baseline.attempts] if baseline else []
    comparison = compare_to_best_of_k(settings.method, [result.first_success_attempt], outcomes,
                                      settings.max_attempts)
    return SolveReport(problem_id=problem.id, model=model or DEFAULT_MODEL, settings=settings, result=result,
                       baseline=baseline, comparison=comparison)
