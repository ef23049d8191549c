"""What the benchmark scripts share: their model, engine and problem arguments, and loading those."""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time
import warnings
from pathlib import Path

from sdpo_core.engine import GenerationEngine
from sdpo_core.engine_choice import add_engine_arguments
from sdpo_core.policy import LoraPolicy
from sdpo_core.problem import Problem
from sdpo_core.serving import EngineSettings, load_serving

EXAMPLE_PROBLEM = Path(__file__).parent.parent / "examples" / "arithmetic.json"


def script_parser(doc: str) -> argparse.ArgumentParser:
    """--model, --engine, --dtype and --problem; the script adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    add_engine_arguments(parser)
    parser.add_argument("--problem", default=str(EXAMPLE_PROBLEM))
    return parser


def load(args: argparse.Namespace, **engine: object) -> tuple[LoraPolicy, GenerationEngine, Problem]:
    """The policy and engine (sdpo_core.serving; `engine` overrides the flags' EngineSettings) and the problem the
    arguments name; library warnings off."""
    warnings.filterwarnings("ignore")
    serving = load_serving(EngineSettings.from_args(args, **engine))
    return serving.policy, serving.engine, Problem.model_validate_json(Path(args.problem).read_text())


# ---- a Redis of its own on loopback, for the API benchmarks --------------------------------------------------------
API_KEY = "bench-key-0123456789"
PROBLEM = {"prompt": "What is 17 * 23?", "verifier": {"type": "numeric", "answer": 391}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    """A redis-server (no persistence) on a free loopback port, once it answers; and its URL."""
    port = free_port()
    process = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory],
                               stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")
