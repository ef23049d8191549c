"""What the benchmark scripts share: their model, engine and problem arguments, and loading those."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from sdpo_core.engines import add_engine_arguments
from sdpo_core.models import load_model_and_tokenizer
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem

EXAMPLE_PROBLEM = Path(__file__).parent.parent / "examples" / "arithmetic.json"


def script_parser(doc: str) -> argparse.ArgumentParser:
    """--model, --engine, --dtype and --problem; the script adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    add_engine_arguments(parser)
    parser.add_argument("--problem", default=str(EXAMPLE_PROBLEM))
    return parser


def load(args: argparse.Namespace) -> tuple[LoraPolicy, Problem]:
    """The policy (base model in the chosen dtype) and the problem the arguments name; library warnings off."""
    warnings.filterwarnings("ignore")
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=args.dtype)
    return LoraPolicy(model, tokenizer), Problem.model_validate_json(Path(args.problem).read_text())
