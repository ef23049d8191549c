"""`sdpo solve`: one problem in this process, its discovery curve against best-of-k, a rich progress bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sdpo_core.curves import Comparison, compare_to_best_of_k, default_baseline_samples
from sdpo_core.measure.plot import discovery_svg
from sdpo_core.methods import learns
from sdpo_core.problem import Problem
from sdpo_core.records import EventSink, ProgressEvent, RunResult, ignore_events
from sdpo_core.settings import RunSettings

ADAPTER_CHECK_SEED = 40_000  # the adapter check's attempts are apart from every run's own


class DecisionNote(BaseModel):
    step: int  # the step after which the method decided
    reason: str


class RunNotes(BaseModel):
    """Why a run went as it did: its method's decisions, its adapter updates and, if it distilled and
    --adapter-samples asked, what the adapter kept: plain-prompt attempts sampled from it after the run."""

    decisions: list[DecisionNote] = []
    updates: int = 0
    adapter_solved: int | None = None
    adapter_samples: int | None = None

    def record(self, event: ProgressEvent) -> None:
        if event.type == "decision" and event.reason:
            self.decisions.append(DecisionNote(step=event.step, reason=event.reason))
        elif event.type == "step" and event.metrics is not None and event.metrics.distilled_samples > 0:
            self.updates += 1


class SolveReport(BaseModel):
    """What `sdpo solve` prints: the run, the best-of-k baseline and their comparison."""

    problem_id: str | None
    model: str
    settings: RunSettings
    result: RunResult
    more_seeds: list[RunResult] = []  # independent runs of the same method with seeds seed+1, seed+2, ...
    notes: list[RunNotes] = []  # one per run, in the order result, *more_seeds
    baseline: RunResult | None
    comparison: Comparison

    def svg(self) -> str:
        title = f"Discovery: {self.problem_id or 'problem'} ({self.model})"
        return discovery_svg(self.comparison.curves, title=title, note=self.comparison.note)

    def print_summary(self, curve_path: str | None = None, console: Console | None = None, *,
                      runs_printed: bool = False) -> None:
        """The runs (unless `runs_printed` when they ended), the discovery table, the comparison's note."""
        console = console or Console()
        if not runs_printed:
            print_runs([self.result, *self.more_seeds], self.notes, self.settings.seed, console)
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
            console.print(f"picture: {curve_path} (these discovery curves, {self.settings.method} against "
                          "best-of-k)")



def print_runs(results: list[RunResult], notes: list[RunNotes], first_seed: int, console: Console) -> None:
    """Every run, as soon as they have all ended: what the user asked for comes before the comparison."""
    notes = notes or [RunNotes() for _ in results]
    for seed, (run, note) in enumerate(zip(results, notes, strict=True), start=first_seed):
        print_run(console, seed, run, note)


def print_run(console: Console, seed: int, run: RunResult, note: RunNotes) -> None:
    """A run in a few lines: its outcome, the decision that shaped its last steps and why, what its adapter kept,
    and its solution."""
    verdict = (f"[green]solved at attempt {run.first_success_attempt}[/]" if run.solved
               else f"[red]{run.status}[/]")
    console.print(f"[bold]{run.method}[/] (seed {seed}): {verdict} after {len(run.attempts)} attempts in "
                  f"{run.steps} steps, {run.seconds:.1f} s")
    if note.decisions:
        last = note.decisions[-1]
        console.print(f"  decided after step {last.step}: {last.reason}", markup=False, highlight=False)
    if note.updates:
        kept = ("" if note.adapter_samples is None else
                f"; after the run its plain prompt solved {note.adapter_solved}/{note.adapter_samples}")
        console.print(f"  adapter: {note.updates} update{'s' if note.updates > 1 else ''}{kept}")
    elif learns(run.method):
        console.print("  adapter: no update (nothing distilled, so nothing learned)")
    if run.solution is not None:
        console.print("  solution: " + " ".join(run.solution.split()), markup=False, highlight=False)


@contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int], EventSink]]:
    """Rich progress bars (attempts, step, best reward, solved), one per run, fed by the loop's events, and auto's
    decisions printed above them: `bar(label, total)` adds a bar and returns the event sink that moves it."""
    if not enabled:
        yield lambda label, total: ignore_events
        return
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("attempts"),
        TextColumn("step {task.fields[step]}"), TextColumn("best reward {task.fields[best]:.2f}"),
        TextColumn("{task.fields[solved]}"), TimeElapsedColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as progress:

        def bar(label: str, total: int) -> EventSink:
            task = progress.add_task(label, total=total, step=0, best=0.0, solved="")

            def on_event(event: ProgressEvent) -> None:
                if event.type == "decision":  # auto says what it does next and why
                    progress.console.print(f"{label} after step {event.step}: {event.reason}", markup=False,
                                           highlight=False)
                solved = f"[green]solved @ {event.first_success_attempt}[/]" if event.solved else ""
                progress.update(task, completed=event.attempts, step=event.step, best=event.best_reward,
                                solved=solved)

            return on_event

        yield bar


def noting(note: RunNotes, sink: EventSink) -> EventSink:
    def on_event(event: ProgressEvent) -> None:
        note.record(event)
        sink(event)

    return on_event


def check_adapters(engine, runs, notes: list[RunNotes], samples: int) -> None:
    """Sample `samples` plain-prompt attempts from each run's adapter that distilled, and verify them: what the
    adapter learned, apart from the context the run may have sampled with."""
    from sdpo_core.engine import GenerationRequest

    checked = [(run, note) for run, note in zip(runs, notes, strict=True) if note.updates and run.adapter]
    if not checked or samples <= 0:
        return
    requests = [GenerationRequest(run.prompt_ids, run.adapter, ADAPTER_CHECK_SEED + run.settings.seed,
                                  list(range(1, samples + 1)), run.settings.max_new_tokens, run.settings.temperature)
                for run, _ in checked]
    for (run, note), completions in zip(checked, engine.generate(requests), strict=True):
        verdicts = run.verify(run.problem, [c.text for c in completions])
        note.adapter_solved, note.adapter_samples = sum(v.solved for v in verdicts), samples


def solve_with_baseline(
    problem: Problem, settings: RunSettings, *, model: str | None, baseline_attempts: int | None,
    show_progress: bool = True, engine: str | None = None, dtype: str | None = None, seeds: int = 1,
    adapter_samples: int = 0,
    on_answer: Callable[[list[RunResult], list[RunNotes], int | None], None] | None = None,
) -> SolveReport:
    """Run the method (`seeds` independent runs) and its best-of-k baseline on `engine` (sdpo_core.engine_choice; weights
    in `dtype`, sdpo_core.models.choose_dtype), and compare them: one run is a step curve, several make an estimate.
    With `adapter_samples`, each run that distilled is checked on that many plain-prompt attempts from its adapter.

    The baseline samples only in the room the runs leave in a generation batch, and stops once its estimate of
    best-of-k at the budget is settled (sdpo_core.curves.baseline_settled). `on_answer` gets the runs' results
    and notes as soon as they have all ended, with the baseline's samples so far (None: none, or it is done)."""
    from sdpo_core.loop import ProblemRun
    from sdpo_core.runs import BASELINE, METHOD, DiscoveryRuns, baseline_of, comparison_runs, settle_when_enough
    from sdpo_core.serving import EngineSettings, adapter_slots, load_serving
    from sdpo_core.verification.verify import verify_function

    serving = load_serving(EngineSettings(model=model, engine=engine, dtype=dtype, max_adapters=adapter_slots(seeds)))
    policy, engine = serving.policy, serving.engine
    samples = default_baseline_samples(settings.max_attempts) if baseline_attempts is None else baseline_attempts

    notes = [RunNotes() for _ in range(seeds)]
    with progress_bars(show_progress) as bar:
        verify = verify_function(problem)
        runs = comparison_runs(
            problem, settings, policy, baseline_samples=samples, name="run", verify=verify,
            sink_for=lambda key: noting(notes[0], bar(settings.method, settings.max_attempts)) if key == METHOD
            else bar("best-of-k baseline", max(samples, settings.attempts_per_step)))
        scheduler = DiscoveryRuns(engine)
        scheduler.add("solve", runs, background=(BASELINE,))
        extra = [f"seed-{settings.seed + i}" for i in range(1, seeds)]
        for i, group in enumerate(extra, start=1):
            seeded = settings.model_copy(update={"seed": settings.seed + i})
            scheduler.add(group, ProblemRun(problem, seeded, policy, name=f"run-{group}", verify=verify,
                                            on_event=noting(notes[i], bar(f"{settings.method} seed {seeded.seed}",
                                                                          settings.max_attempts))))
        method_runs = [runs[METHOD], *(scheduler.runs(group)["run"] for group in extra)]
        answered = False

        def after_step(report) -> None:
            nonlocal answered
            draw = runs.get(BASELINE)
            if not answered and all(run.done for run in method_runs):
                answered = True
                check_adapters(engine, method_runs, notes, adapter_samples)
                if on_answer is not None:
                    on_answer([run.result() for run in method_runs], notes,
                              len(draw.attempts) if draw is not None and not draw.done else None)
            if draw is not None:
                settle_when_enough(draw, settings.max_attempts)

        try:
            scheduler.run_until_done(after_step)
            result, *more = [run.result() for run in method_runs]
            baseline = baseline_of(runs)
            baseline_result = baseline.result() if baseline is not None else None
        finally:
            scheduler.close_all()
    outcomes = [a.solved for a in baseline_result.attempts] if baseline_result else []
    comparison = compare_to_best_of_k(settings.method, [r.first_success_attempt for r in [result, *more]],
                                      outcomes, settings.max_attempts, first_step=settings.attempts_per_step)
    return SolveReport(problem_id=problem.id, model=serving.model_name, settings=settings, result=result,
                       more_seeds=more, notes=notes, baseline=baseline_result, comparison=comparison)
