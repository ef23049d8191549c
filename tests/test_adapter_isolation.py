"""One job's adapter cannot break another's (issue 12, item 4): target modules are checked where settings are
made, generation mixes adapters that wrap different layers, and a finished job leaves no adapter behind."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from test_engine import perturb, request

from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.settings import DEFAULT_TARGET_MODULES, RunSettings, SDPOSettings

Q_ONLY = SDPOSettings(target_modules=["q_proj"], lora_rank=4)


def adapter_keys_left(policy) -> set[str]:
    """Adapter names any LoRA layer still holds, in any of its per-adapter tables."""
    left: set[str] = set()
    for module in policy.base.modules():
        if isinstance(module, LoraLayer):
            for attr in (*module.adapter_layer_names, *module.other_param_names):
                table = getattr(module, attr, None)
                if isinstance(table, dict | torch.nn.ModuleDict | torch.nn.ParameterDict):
                    left |= set(table.keys())
    return left


@pytest.mark.parametrize("module", ["lm_head", "embed_tokens", "not_a_layer", ""])
def test_target_modules_outside_the_projections_are_refused(module):
    with pytest.raises(ValidationError) as caught:
        RunSettings.model_validate({"sdpo": {"target_modules": ["q_proj", module]}})
    error = caught.value.errors()[0]
    assert error["loc"] == ("sdpo", "target_modules")
    assert repr(module) in error["msg"] and "q_proj" in error["msg"]


def test_any_subset_of_the_projections_is_accepted_once_each():
    assert SDPOSettings(target_modules=["v_proj", "q_proj", "v_proj"]).target_modules == ["v_proj", "q_proj"]
    assert SDPOSettings().target_modules == DEFAULT_TARGET_MODULES


def test_adapters_that_wrap_different_layers_share_a_generation_batch(tiny_policy):
    """A q_proj-only rank-4 adapter next to a default one: each row gets its own adapter's layers, as if alone."""
    tiny_policy.create_adapter("narrow", Q_ONLY, seed=1)
    tiny_policy.create_adapter("wide", SDPOSettings(), seed=2)
    perturb(tiny_policy, "narrow", seed=1)
    perturb(tiny_policy, "wide", seed=2)
    engine = TransformersEngine(tiny_policy)
    narrow, wide = request(tiny_policy, adapter="narrow"), request(tiny_policy, adapter="wide")
    together = engine.generate([narrow, wide])
    assert [c.token_ids for c in together[0]] == [c.token_ids for c in engine.generate([narrow])[0]]
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in engine.generate([wide])[0]]
    base = engine.generate([request(tiny_policy)])[0]
    assert [c.token_ids for c in together[0]] != [c.token_ids for c in base]  # the narrow adapter does act


def test_a_layer_wrapped_for_a_finished_job_does_not_break_later_generation(tiny_policy):
    """peft leaves a layer wrapped after its last adapter goes; the next jobs' generation must not trip on it."""
    odd = SDPOSettings.model_construct(**{**SDPOSettings().model_dump(), "target_modules": ["q_proj", "lm_head"]})
    tiny_policy.create_adapter("odd", odd, seed=0)  # (settings validation refuses this today; older jobs did it)
    tiny_policy.delete_adapter("odd")
    tiny_policy.create_adapter("next", SDPOSettings(), seed=0)
    completions = TransformersEngine(tiny_policy).generate([request(tiny_policy, adapter="next")])[0]
    assert len(completions) == 4


def test_a_finished_run_leaves_no_adapter_in_any_layer(tiny_policy):
    from sdpo_core.loop import ProblemRun
    from sdpo_core.problem import Problem

    problem = Problem.model_validate({"prompt": "Say a", "verifier": {"type": "exact", "answer": "a"}})
    ema = SDPOSettings(teacher="ema")  # an EMA teacher is a second adapter per run: both must go
    keep = ProblemRun(problem, RunSettings(method="sdpo", max_attempts=16, attempts_per_step=4, sdpo=ema), tiny_policy, name="keep")
    narrow = Q_ONLY.model_copy(update={"teacher": "ema"})
    done = ProblemRun(problem, RunSettings(method="sdpo", max_attempts=16, attempts_per_step=4, sdpo=narrow), tiny_policy,
                      name="done")
    assert {"sdpo_done", "sdpo_done-teacher"} <= adapter_keys_left(tiny_policy)
    done.close()
    assert tiny_policy.adapters == ["keep", "keep-teacher"]
    assert adapter_keys_left(tiny_policy) == {"sdpo_keep", "sdpo_keep-teacher"}
    keep.close()
    assert tiny_policy.adapters == [] and adapter_keys_left(tiny_policy) == set()


def test_sdpo_solve_refuses_the_same_target_modules_as_the_api(tmp_path):
    """`sdpo solve` validates settings with the same RunSettings as the API: one line naming the field."""
    from test_cli_solve import run_sdpo, write

    problem = write(tmp_path / "p.json", {"prompt": "q", "verifier": {"type": "exact", "answer": "1"}})
    settings = write(tmp_path / "s.json", {"sdpo": {"target_modules": ["q_proj", "lm_head"]}})
    proc = run_sdpo("solve", problem, "--settings", settings, "--model", "unused")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sdpo.target_modules" in proc.stderr and "'lm_head' cannot carry an adapter" in proc.stderr


def test_every_student_adapter_stays_trainable_and_teachers_stay_frozen(tiny_policy):
    """Adapter switches leave requires_grad alone: a student created before another still trains, a teacher never."""
    from sdpo_core.teacher import init_teacher, teacher_adapter

    ids = torch.tensor([[1, 2, 3, 4]])
    mask = torch.ones_like(ids)
    before = tiny_policy.hidden_states(ids, mask, None)
    ema = SDPOSettings(teacher="ema")
    tiny_policy.create_adapter("first", ema, seed=1)
    init_teacher(tiny_policy, "first", ema, seed=1)
    tiny_policy.create_adapter("second", Q_ONLY, seed=2)
    perturb(tiny_policy, "first", seed=1)
    for name in ("first", "second"):
        assert all(p.requires_grad for p in tiny_policy.parameters(name).values())
    assert not any(p.requires_grad for p in tiny_policy.parameters(teacher_adapter("first")).values())

    tiny_policy.hidden_states(ids, mask, "first").sum().backward()  # after "second" was created and run
    tiny_policy.hidden_states(ids, mask, "second")
    assert all(p.grad is not None for p in tiny_policy.parameters("first").values())
    assert all(p.grad is None for p in tiny_policy.parameters("second").values())
    assert torch.equal(tiny_policy.hidden_states(ids, mask, None), before)  # the base pass runs no adapter
    assert not torch.equal(tiny_policy.hidden_states(ids, mask, "first"), before)

    tiny_policy.delete_adapter("second")
    assert all(p.requires_grad for p in tiny_policy.parameters("first").values())
    assert not any(p.requires_grad for p in tiny_policy.parameters(teacher_adapter("first")).values())


# ---- a diverged adapter (issue 17, item 1) -------------------------------------------------------------------------
def poison(policy, name: str, value: float) -> None:
    """Every weight of the adapter set to `value` (inf: what a 1e37 learning rate made of it)."""
    with torch.no_grad():
        for param in policy.parameters(name).values():
            param.fill_(value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e30])
def test_a_diverged_adapter_in_the_batch_leaves_the_other_rows_as_they_are_alone(tiny_policy, value):
    """Rows of other jobs and of the base model sample exactly what they sample without the diverged adapter in
    the batch, with finite log-probs: each row selects its own adapter's columns instead of multiplying by 0."""
    tiny_policy.create_adapter("victim", SDPOSettings(), seed=1)
    tiny_policy.create_adapter("poisoned", SDPOSettings(lora_alpha=1024.0, lora_rank=1), seed=2)
    perturb(tiny_policy, "victim", seed=1)
    poison(tiny_policy, "poisoned", value)
    engine = TransformersEngine(tiny_policy)
    victim, base = request(tiny_policy, adapter="victim"), request(tiny_policy)
    together = engine.generate([request(tiny_policy, adapter="poisoned"), victim, base])
    for got, alone in ((together[1], engine.generate([victim])[0]), (together[2], engine.generate([base])[0])):
        assert [c.token_ids for c in got] == [c.token_ids for c in alone]
        assert all(torch.isfinite(torch.tensor(c.logprobs)).all() for c in got)


@pytest.mark.parametrize("value", [float("inf"), 1e30])
def test_an_update_that_diverges_the_adapter_fails_its_run_by_name(tiny_policy, value):
    """The update checks the adapter it made: non-finite or past the norm bound is the run's own failure."""
    from sdpo_core.failures import RunFailure
    from sdpo_core.update import check_adapter

    settings = SDPOSettings()
    tiny_policy.create_adapter("job", settings, seed=1)
    check_adapter(tiny_policy, "job", settings)  # a fresh adapter passes
    poison(tiny_policy, "job", value)
    with pytest.raises(RunFailure) as caught:
        check_adapter(tiny_policy, "job", settings)
    assert caught.value.code == "adapter_diverged" and "learning_rate" in caught.value.message
