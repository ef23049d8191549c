"""docs/settings.md, generated from the settings objects so that the page and the code cannot disagree.

    python -m service.settings_doc > docs/settings.md        (a test checks that the page is up to date)
"""

from __future__ import annotations

from pydantic_settings import BaseSettings

from sdpo_core.verification.settings import env_var
from service.config import ApiSettings
from workers.settings import StoreSettings, WorkerSettings, flag, nested_settings

HEADER = """# Settings

Every setting of the service's two processes is a typed field, read once: from the environment variable
`SDPO_<NAME>` (or a `.env` file in the working directory), overridden by the command-line flag `--<name>` of
`sdpo serve` / `sdpo worker`. The tables below are generated from the code (`python -m service.settings_doc >
docs/settings.md`): `workers/settings.py` holds the shared part and the worker's, `service/config.py` the API's,
`sdpo_core/verification/settings.py` the verifier pool's and its sandbox's, which the worker nests and `sdpo solve`
and `sdpo verify` read from the environment alone.
Give the API and every worker the same shared settings (the same Redis, prefix, blob store and retention).
"""

OTHERS = """## Read elsewhere

| variable | read by | meaning |
| --- | --- | --- |
| `SDPO_URL`, `SDPO_API_KEY` | the client SDK and the CLI's client commands | server URL (default `http://localhost:8000`) and API key |
| `SDPO_MODEL` | `sdpo solve`, `sdpo bench` (sdpo_core/models.py) | the model when `--model` is not given (the worker reads it as its `model` setting) |
| `SDPO_CACHE_DIR` | sdpo_core/models.py | where the offline default model is converted and cached |
| `SDPO_METHOD_MODULES` | sdpo_core/methods.py | modules (comma-separated, importable) that register more discovery methods when the registry loads: a new method is one class and one `register()` call (README, "Methods") |
| `SDPO_CHECKPOINT_KEY`, `SDPO_CHECKPOINT_KEY_FILE` | workers/checkpoint.py | the HMAC key checkpoints are signed with, the same secret on every worker (default: a random key per process, so no other worker can resume its jobs) |
| `SDPO_REDIS_PASSWORD` | deploy/ (compose, Kubernetes) | Redis's `--requirepass`; the deployments put it into `SDPO_REDIS_URL` and give it to KEDA and the probes |
| `SDPO_WEBHOOK_ALLOW_PRIVATE` | sdpo_core/verifiers/webhook.py | `1` lets webhook verifiers call private addresses (docs/verifiers.md) |
| `SDPO_WORKER_STALE_S`, `SDPO_REDIS_URL`, `SDPO_REDIS_PREFIX` | deploy/healthcheck.py | the container health check reads the same values as the service |
| `SDPO_RESULT_FD` | the sandbox harness | internal: the file descriptor a sandboxed child writes its result to |
| `SDPO_TEST_DEVICE` | tests/conftest.py | tests only: `cuda` runs the engine contract suite on a GPU |
| `SDPO_IMAGE_TEST_DIR`, `SDPO_IMAGE_TEST_KEEP`, `SDPO_TEST_REDIS_PORT`, `SDPO_TEST_API_PORT`, `SDPO_TEST_WHEEL_PORT`, `SDPO_TEST_API_KEY`, `SDPO_TEST_API_KEYS`, `SDPO_TEST_SERVICE_SECRET` | deploy/test_images.sh, deploy/image_checks.py, deploy/compose.hostnet.yaml | `make test-images` only: its work folder, `1` to leave the stack running, the loopback ports of Redis, the API and the local wheel index, the test's API key (and its hashed `tenant=sha256` form), the bait secret of the hostile checks (docs/deploy.md, section 11) |
"""


def table(settings: type[BaseSettings], *, skip: tuple[str, ...] = ()) -> str:
    """One row per field; a field that nests settings gets a table of its own (`nested_tables`)."""
    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in settings.model_fields.items():
        if name in skip or nested_settings(info) is not None:
            continue
        default = info.default_factory() if info.default_factory else info.default
        shown = "" if default in (None, "") else f"`{default}`"
        rows.append(f"| `{env_var(settings, name)}` | `{flag(settings, name)}` | {shown} | {info.description} |")
    return "\n".join(rows) + "\n"


def nested_tables(settings: type[BaseSettings], path: str) -> list[str]:
    """The tables of the settings nested in `settings` (reached as `path`.field), depth first."""
    sections = []
    for name, info in settings.model_fields.items():
        nested = nested_settings(info)
        if nested is not None:
            sections += [f"### `{path}.{name}` (`{nested.__name__}`)\n",
                         f"{info.description} The whole object may also be given as JSON in "
                         f"`{env_var(settings, name)}`.\n",
                         table(nested), *nested_tables(nested, f"{path}.{name}")]
    return sections


def render() -> str:
    shared = tuple(StoreSettings.model_fields)
    return "\n".join([
        HEADER,
        "## Shared by the API and the workers (`StoreSettings`)\n",
        table(StoreSettings),
        "## The worker: `sdpo worker` (`WorkerSettings`)\n",
        table(WorkerSettings, skip=shared),
        *nested_tables(WorkerSettings, "WorkerSettings"),
        "## The API: `sdpo serve` (`ApiSettings`)\n",
        table(ApiSettings, skip=shared),
        OTHERS,
    ])


if __name__ == "__main__":
    print(render(), end="")
