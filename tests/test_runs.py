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
    runs = DiscoveryRuns(engine)
    job = comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=8, name="job-1")
    assert set(job) == {METHOD, BASELINE} and baseline_of(job) is job[BASELINE]
    runs.add("job-1", job)
    full_curve = SETTINGS.model_copy(update={"method": "best-of-k", "stop_at_first_success": False})
    own = comparison_runs(PROBLEM, full_curve, tiny_policy, baseline_samples=8, name="job-2")
    assert set(own) == {METHOD} and baseline_of(own) is own[METHOD]  # a full best-of-k run is its own baseline
    runs.add("job-2", own)
    assert set(tiny_policy.adapters) == {"job-1"}  # only sdpo trains an adapter (the default teacher is the base)

    while runs.active:
        assert runs.step() == {}
    assert engine.calls == [3, 3]  # every live run of both groups in each generation call
    assert sorted(runs.finished) == ["job-1", "job-2"]
    runs.close("job-1")
    runs.close("job-2")
    assert engine.dropped == ["job-1"] and tiny_policy.adapters == [] and runs.groups == {}


def test_a_faulty_group_fails_alone(tiny_policy):
    def broken_verify(problem, completions):
        raise RuntimeError("this group's verifier pipeline is broken")

    runs = DiscoveryRuns(TransformersEngine(tiny_policy))
    runs.add("bad", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="bad",
                                    verify=broken_verify))
    runs.add("good", comparison_runs(PROBLEM, SETTINGS, tiny_policy, baseline_samples=0, name="good"))
    failures = runs.step()
    assert list(failures) == ["bad"] and "broken" in str(failures["bad"])
    assert runs.runs("bad")[METHOD].attempts == [] and len(runs.runs("good")[METHOD].attempts) >= 4
    runs.close_all()
    assert tiny_policy.adapters == []
