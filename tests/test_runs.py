"""The one job runtime (sdpo_core.runs): a method and its baseline assembled in one place, many groups stepped in
shared generation batches, a faulty group failed alone, and closing a group frees its adapters in the policy and
in the engine."""

from __future__ import annotations

from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.problem import Problem
from sdpo_core.runs import BASELINE, METHOD, DiscoveryRuns, baseline_of, baseline_settings, comparison_runs
from sdpo_core.settings import RunSettings

PROBLEM = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra"}})
SETTINGS = RunSettings(method="sdpo", max_attempts=8, attempts_per_step=4, max_new_tokens=6, seed=3)


class RecordingEngine(TransformersEngine):
    """The real engine, noting each generate call's size and the adapters it was told to drop."""

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.calls: list[int] = []
        self.dropped: list[str] = []

    def generate(self, requests):
        self.calls.append(len(requests))
        return super().generate(requests)

    def drop_adapter(self, name: str) -> None:
        self.dropped.append(name)


def test_the_baseline_is_assembled_once_for_every_caller():
    baseline = baseline_settings(SETTINGS, 20)
    assert (baseline.method, baseline.max_attempts, baseline.stop_at_first_success) == ("best-of-k", 20, False)
    assert (baseline.seed, baseline.attempts_per_step) == (3, 4)  # the method's, unless a caller says otherwise
    bench = baseline_settings(SETTINGS, 20, seed=10_000, attempts_per_step=64)
    assert (bench.seed, bench.attempts_per_step, bench.max_attempts) == (10_000, 64, 64)


def test_groups_share_generation_batches_and_closing_frees_adapters(tiny_policy):
    engine = RecordingEngine(tiny_policy)
    runs = DiscoveryRuns(engine, patience_s=None)
    job = comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=8, name="job-1")
    assert set(job) == {METHOD, BASELINE} and baseline_of(job) is job[BASELINE]
    runs.add("job-1", job)
    full_curve = SETTINGS.model_copy(update={"method": "best-of-k", "stop_at_first_success": False})
    own = comparison_runs(PROBLEM, full_curve, tiny_policy, baseline_samples=8, name="job-2")
    assert set(own) == {METHOD} and baseline_of(own) is own[METHOD]  # a full best-of-k run is its own baseline
    runs.add("job-2", own)
    assert set(tiny_policy.adapters) == {"job-1"}  # only sdpo trains an adapter (the default teacher is the base)

    while runs.active:
        assert runs.step().failures == {}
    assert engine.calls == [3, 3]  # every live run of both groups in each generation call
    assert sorted(runs.finished) == ["job-1", "job-2"]
    runs.close("job-1")
    runs.close("job-2")
    assert engine.dropped == ["job-1"] and tiny_policy.adapters == [] and runs.groups == {}


def test_a_faulty_group_fails_alone(tiny_policy):
    def broken_verify(problem, completions):
        raise RuntimeError("this group's verifier pipeline is broken")

    runs = DiscoveryRuns(TransformersEngine(tiny_policy), patience_s=None)
    runs.add("bad", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="bad",
                                    verify=broken_verify))
    runs.add("good", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="good"))
    failures = runs.step().failures
    assert list(failures) == ["bad"] and "broken" in str(failures["bad"])
    assert runs.runs("bad")[METHOD].attempts == [] and len(runs.runs("good")[METHOD].attempts) >= 4
    runs.close_all()
    assert tiny_policy.adapters == []


# ---- sharing a scheduler (issue 17, items 2 and 3) -----------------------------------------------------------------
def test_a_slow_verifier_holds_back_only_its_own_group(tiny_policy):
    """Group `slow`'s verifier does not answer until released; group `fast` takes three steps meanwhile, each
    sampled while `slow` still waits for its verdicts, and `slow` finishes its step once they come."""
    import threading

    from sdpo_core.loop import ProblemRun
    from sdpo_core.verifiers import verify_attempts

    release = threading.Event()

    def stuck(problem, completions):
        release.wait(120)
        return verify_attempts(problem, completions)

    best_of_k = SETTINGS.model_copy(update={"method": "best-of-k", "max_attempts": 40})
    runs = DiscoveryRuns(TransformersEngine(tiny_policy), patience_s=0.2)
    runs.add("slow", ProblemRun(PROBLEM, best_of_k, tiny_policy, name="slow", verify=stuck))
    runs.add("fast", ProblemRun(PROBLEM, best_of_k, tiny_policy, name="fast"))
    advanced = [runs.step() for _ in range(3)]
    assert [report.advanced for report in advanced] == [{"fast"}] * 3
    assert runs.runs("fast")["run"].step == 3 and runs.runs("slow")["run"].step == 0
    release.set()
    while runs.runs("slow")["run"].step == 0:
        assert runs.step().failures == {}
    assert len(runs.runs("slow")["run"].attempts) == 4
    runs.close_all()


def test_a_step_past_its_wall_clock_fails_its_group_and_a_stopped_group_takes_no_step(tiny_policy):
    from sdpo_core.failures import RunFailure

    slow = DiscoveryRuns(TransformersEngine(tiny_policy), patience_s=None, step_seconds=1e-9)
    slow.add("job", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="job"))
    failure = slow.step().failures["job"]
    assert isinstance(failure, RunFailure) and failure.code == "step_timeout"
    assert "settings.attempts_per_step (4)" in failure.message
    slow.close_all()

    runs = DiscoveryRuns(TransformersEngine(tiny_policy), patience_s=None)
    runs.add("cancelled", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="cancelled"))
    runs.add("other", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="other"))
    runs.stop("cancelled")
    report = runs.step()
    assert report.failures == {} and report.advanced == {"other"}
    assert runs.runs("cancelled")[METHOD].attempts == []
    runs.close_all()


def test_a_step_of_many_attempts_is_sampled_in_pieces_beside_small_steps(tiny_policy):
    """chunk_attempts 4: a run of 12 attempts a step adds 4 to each generation call and is verified once whole,
    while a run of 4 a step takes a step at every call; the big run's attempts are those it samples alone."""
    from sdpo_core.loop import ProblemRun

    engine = RecordingEngine(tiny_policy)
    big_settings = SETTINGS.model_copy(update={"method": "best-of-k", "max_attempts": 12, "attempts_per_step": 12})
    small_settings = SETTINGS.model_copy(update={"method": "best-of-k", "max_attempts": 12})
    runs = DiscoveryRuns(engine, patience_s=None, chunk_attempts=4)
    runs.add("big", ProblemRun(PROBLEM, big_settings, tiny_policy, name="big"))
    runs.add("small", ProblemRun(PROBLEM, small_settings, tiny_policy, name="small"))
    reports = [runs.step() for _ in range(3)]
    assert [r.advanced for r in reports] == [{"small"}, {"small"}, {"small", "big"}]
    big = runs.runs("big")["run"]
    assert [a.index for a in big.attempts] == list(range(1, 13)) and big.step == 1
    alone = DiscoveryRuns(TransformersEngine(tiny_policy), patience_s=None)
    alone.add("big", ProblemRun(PROBLEM, big_settings, tiny_policy, name="big-alone"))
    alone.step()
    assert [a.text for a in alone.runs("big")["run"].attempts] == [a.text for a in big.attempts]
    runs.close_all()
    alone.close_all()
