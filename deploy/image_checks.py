#!/usr/bin/env python3
"""The checks `make test-images` (deploy/test_images.sh) runs against the service's containers, from outside them.

    image_checks.py wheel-index DIR                 write DIR/simple/, a PEP 503 index of the wheels in DIR/files
    image_checks.py stack --work DIR --results FILE -- COMPOSE...
                                                    start the stack with the compose command COMPOSE and attack it
    image_checks.py hostile-inside DIR --expect contained|refused
                                                    (in a worker container) the sandbox suite's hostile programs
    image_checks.py summary --results FILE          the one line of what held

Not a pytest module: `make test` never starts Docker. The host side needs the project's client (service.client, the
`sdpo` command line), redis-py and the `docker` command; `hostile-inside` runs in the worker image.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- the torch wheel index --------------------------------------------------------------------------------------
def wheel_index(directory: Path) -> None:
    """A PEP 503 simple index over DIR/files/*.whl (project names normalized), for pip's --index-url."""
    files = sorted((directory / "files").glob("*.whl"))
    if not files:
        raise SystemExit(f"no wheels in {directory / 'files'}")
    projects: dict[str, list[str]] = {}
    for wheel in files:
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        projects.setdefault(name, []).append(wheel.name)
    simple = directory / "simple"
    for name, wheels in projects.items():
        (simple / name).mkdir(parents=True, exist_ok=True)
        links = "".join(f'<a href="../../files/{html.escape(w)}">{html.escape(w)}</a>\n' for w in wheels)
        (simple / name / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    (simple / "index.html").write_text("<!DOCTYPE html>\n<html><body>\n" + "".join(
        f'<a href="{n}/">{n}</a>\n' for n in sorted(projects)) + "</body></html>\n")


# ---- small helpers ------------------------------------------------------------------------------------------------
class CheckFailed(Exception):
    """A check that did not hold: its message says what was seen."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def log(message: str) -> None:
    print(f"[image-checks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(command: list[str], *, check_rc: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check_rc and done.returncode != 0:
        raise CheckFailed(f"{shlex.join(command)} exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}")
    return done


def wait_for(what: str, probe, timeout: float, interval: float = 1.0):
    """probe()'s first truthy value within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


# ---- the stack, from outside its containers -------------------------------------------------------------------
# Problems: one the offline model solves within a step or two (the shipped examples are hard on purpose: pass@1 of
# 2-6%, docs/benchmarks.md), and one it never solves.
SOLVABLE = {"id": "say-hello", "prompt": "Say hello.",
            "verifier": {"type": "regex", "pattern": "(?i)hello", "target": "completion", "full_match": False}}
NEVER = {"id": "never", "prompt": "Say the secret",
         "verifier": {"type": "regex", "pattern": "QQQQQQQQQQ", "target": "completion"}}
SMALL = {"attempts_per_step": 4, "max_new_tokens": 8}


class Stack:
    def __init__(self, compose: list[str], work: Path, results: Path) -> None:
        self.compose_command, self.work, self.results = compose, work, results
        self.docker = os.environ.get("DOCKER", "docker")
        self.env = read_env(work / "compose.env")
        self.api = f"http://127.0.0.1:{self.env['SDPO_TEST_API_PORT']}"
        self.key = self.env["SDPO_TEST_API_KEY"]

    def record(self, name: str, value: object) -> None:
        with self.results.open("a") as out:
            out.write(f"{name}={value}\n")

    def compose(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run([*self.compose_command, *args], **kwargs)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        check(cid, f"no running {service} container")
        return cid

    def inspect(self, cid: str, template: str) -> str:
        return run([self.docker, "inspect", "-f", template, cid]).stdout.strip()

    def health(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        return self.inspect(cid, "{{if .State.Health}}{{.State.Health.Status}}{{end}}") if cid else "gone"

    def wait_healthy(self, services: tuple[str, ...], timeout: float) -> None:
        def all_healthy() -> bool:
            states = {service: self.health(service) for service in services}
            check("unhealthy" not in states.values(), f"unhealthy: {states}")
            return all(state == "healthy" for state in states.values())
        wait_for(f"{', '.join(services)} to report healthy", all_healthy, timeout, interval=2)

    def client(self):
        from service.client import Client
        return Client(self.api, self.key, timeout=30)

    def sdpo(self, *args: str) -> subprocess.Popen:
        """The `sdpo` command line, as a user runs it against the API."""
        env = {**os.environ, "SDPO_URL": self.api, "SDPO_API_KEY": self.key}
        return subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def worker_logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", "worker", check_rc=False).stdout

    # -- the checks, in the order `stack` runs them
    def up(self) -> None:
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", "--pull", "never")
        self.wait_healthy(("redis", "api", "worker"), timeout=300)
        took = time.monotonic() - started
        self.record("healthy_s", f"{took:.0f}")
        log(f"redis, api and worker report healthy {took:.0f} s after `up`")

    def redis_as_shipped(self) -> None:
        """The shipped password and memory settings hold in the running Redis."""
        import redis
        port = int(self.env["SDPO_TEST_REDIS_PORT"])
        with contextlib.closing(redis.Redis(port=port, socket_timeout=5)) as anonymous:
            try:
                anonymous.ping()
                raise CheckFailed("Redis answered a client without the password")
            except redis.AuthenticationError:
                pass
        with contextlib.closing(redis.Redis(port=port, password=self.env["SDPO_REDIS_PASSWORD"],
                                            decode_responses=True, socket_timeout=5)) as client:
            config = {key: client.config_get(key)[key] for key in
                      ("maxmemory", "maxmemory-policy", "appendonly", "appendfsync", "bind", "port")}
        wanted = {"maxmemory": str(1200 * 1024 * 1024), "maxmemory-policy": "noeviction", "appendonly": "yes",
                  "appendfsync": "everysec", "bind": "127.0.0.1", "port": str(port)}
        check(config == wanted, f"Redis runs with {config}, not {wanted}")
        log("redis: password required, maxmemory 1200mb noeviction, AOF everysec, on 127.0.0.1 only")

    def worker_as_shipped(self) -> None:
        """The worker runs as uid 10001 under the shipped seccomp profile, without new privileges."""
        cid = self.container("worker")
        status = run([self.docker, "exec", cid, "cat", "/proc/1/status"]).stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        check(fields["Uid"].split()[:2] == ["10001", "10001"], f"the worker runs as uid {fields['Uid']}")
        check(fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1",
              f"the worker has Seccomp {fields['Seccomp']}, NoNewPrivs {fields['NoNewPrivs']}")
        options = json.loads(self.inspect(cid, "{{json .HostConfig.SecurityOpt}}"))
        shipped = json.loads((ROOT / "deploy" / "seccomp" / "sdpo-worker.json").read_text())
        profiles = [json.loads(o.split("=", 1)[1]) for o in options if o.startswith("seccomp=")]
        check(profiles == [shipped], "the worker's seccomp profile is not deploy/seccomp/sdpo-worker.json")
        check("no-new-privileges:true" in options, f"security options {options}")
        log("worker: uid 10001, the shipped seccomp profile in force, no-new-privileges")

    def job_end_to_end(self) -> None:
        """`sdpo submit --wait` of a shipped example; its curve against best-of-k and its adapter, by the SDK."""
        settings, problem = self.work / "settings.json", self.work / "say-hello.json"
        settings.write_text(json.dumps({"attempts_per_step": 4, "max_new_tokens": 16}))
        problem.write_text(json.dumps(SOLVABLE))
        budget, started = 8, time.monotonic()
        cli = self.sdpo("submit", str(problem), "--wait", "--json", "--budget", str(budget), "--settings",
                        str(settings))
        out, err = cli.communicate(timeout=600)
        check(cli.returncode == 0, f"sdpo submit --wait exited {cli.returncode}: {err[-2000:]}")
        job = json.loads(out)
        check(job["status"] == "succeeded", f"job {job['id']} ended {job['status']} ({job['attempts']} attempts), "
              f"not solved:\n{self.worker_logs()}")
        with self.client() as client:
            # The best-of-k baseline goes on after the job's outcome, at a lower priority, and stops once its
            # estimate is settled (at most 2 x budget samples): the curve compares the two once it is done.
            final = wait_for("the best-of-k baseline", lambda: (j := client.get(job["id"])).baseline is not None
                             and j.baseline.state == "done" and j, timeout=600, interval=2)
            took = time.monotonic() - started
            curve = client.curve(job["id"])
            names = [c.label for c in curve.comparison.curves]
            check(len(names) == 2 and any("best-of-k" in name for name in names), f"the curve has {names}")
            svg = client.curve_svg(job["id"])
            check("<svg" in svg[:500], "curve.svg is not an SVG")
            (self.work / "curve.svg").write_text(svg)
            adapter = client.download_adapter(job["id"], self.work / "adapter.tar.gz")
            import tarfile
            with tarfile.open(adapter) as archive:
                members = archive.getnames()
            check(any(m.endswith("adapter_config.json") for m in members)
                  and any(m.endswith(".safetensors") for m in members), f"the adapter archive holds {members}")
            attempts = client.attempts(job["id"])
            check([a.index for a in attempts] == list(range(1, final.attempts + 1)), "attempt indices")
        self.record("job", f"{SOLVABLE['id']} solved at attempt {final.first_success_attempt} of {final.budget}")
        self.record("job_s", f"{took:.0f}")
        log(f"job {final.id}: {final.status} at attempt {final.first_success_attempt}, best-of-k "
            f"{final.baseline.samples} samples, curve {names}, adapter {adapter.stat().st_size} bytes, {took:.0f} s")

    def hostile(self) -> None:
        """The sandbox suite's hostile programs in the running worker container (uid 10001, the shipped seccomp
        profile): each contained. Then in the worker image under Docker's default seccomp profile, where bubblewrap
        cannot start: each refused (fail closed)."""
        cid = self.container("worker")
        started_at = self.inspect(cid, "{{.State.StartedAt}}")
        inside = "/tmp/sdpo-image-checks"
        run([self.docker, "exec", cid, "mkdir", "-p", inside])
        for path in ("tests/hostile_as_deployed.py", "tests/sandbox_helpers.py", "deploy/image_checks.py"):
            run([self.docker, "cp", str(ROOT / path), f"{cid}:{inside}/"])
        done = run([self.docker, "exec", cid, "python", f"{inside}/image_checks.py", "hostile-inside", inside,
                    "--checkpoints", "/data/checkpoints", "--expect", "contained"], check_rc=False)
        contained = self.hostile_report(done, "in the worker container")
        check(self.inspect(cid, "{{.State.Running}} {{.State.StartedAt}} {{.RestartCount}}")
              == f"true {started_at} 0", "the worker container did not survive the hostile programs")
        image = self.inspect(cid, "{{.Config.Image}}")

        def in_a_fresh_container(*options: str, expect: str) -> subprocess.CompletedProcess:
            return run([self.docker, "run", "--rm", "--network", "none", "--user", "10001:10001", "--workdir", "/tmp",
                        "--security-opt", "no-new-privileges:true", "-v", f"{ROOT / 'tests'}:/checks/tests:ro",
                        "-v", f"{ROOT / 'deploy' / 'image_checks.py'}:/checks/image_checks.py:ro", *options, image,
                        "python", "/checks/image_checks.py", "hostile-inside", "/checks/tests", "--expect", expect],
                       check_rc=False)

        refused = self.hostile_report(in_a_fresh_container(expect="refused"), "under Docker's default seccomp profile")
        # The control: with isolation switched off (the single-user opt-in) the same judge must see escapes, or its
        # "contained" above would prove nothing.
        control = in_a_fresh_container("-e", "SDPO_SANDBOX_MIN_ISOLATION=rlimits", expect="contained")
        lines = [line for line in control.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"problems": [], "breached": []}
        seen, breached = result["problems"], result["breached"]
        check(any("redis.sock" in p for p in seen) and any("checkpoint volume" in p for p in seen),
              f"the control run without isolation showed no escape: {control.stdout[-2000:]} {control.stderr[-2000:]}")
        log(f"control: with SDPO_SANDBOX_MIN_ISOLATION=rlimits the same judge sees {len(breached)} of {contained} "
            f"attacks get through ({'; '.join(breached)})")
        self.record("hostile", f"{contained} contained in the worker container, {refused} refused under Docker's "
                    f"default seccomp (a control without isolation: {len(breached)} of {contained} got through)")

    @staticmethod
    def hostile_report(done: subprocess.CompletedProcess, where: str) -> int:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        check(done.returncode == 0 and lines, f"hostile programs {where}: exit {done.returncode}\n"
              f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        result = json.loads(lines[-1])
        check(result["ok"], f"hostile programs {where}: {result['problems']}")
        log(f"hostile programs {where}: {len(result['attacks'])} {result['expect']} ({'; '.join(result['attacks'])})")
        return len(result["attacks"])

    def faults(self) -> None:
        """`docker kill` of the worker container mid-job; while no worker runs the API answers and takes a job;
        Redis restarts with one job mid-run and one queued; a new worker container resumes the first from its
        checkpoint and runs the second: every attempt recorded once, the first job started twice, nothing lost."""
        budget = 24
        with self.client() as client:
            job = client.submit(NEVER, budget=budget, settings=SMALL, baselines=[])
            cid = self.container("worker")
            wait_for("the job's second step", lambda: client.get(job.id).attempts >= 8, timeout=300, interval=0.5)
            checkpoints = run([self.docker, "exec", cid, "ls", f"/data/checkpoints/{job.id}/"],
                              check_rc=False).stdout.split()
            check(any(name.startswith("runs-g") for name in checkpoints), f"no checkpoint of {job.id}: {checkpoints}")
            run([self.docker, "kill", "--signal", "KILL", cid])
            at_kill = client.get(job.id)
            check(at_kill.status == "running" and at_kill.attempts < budget,
                  f"at the kill the job was {at_kill.status} with {at_kill.attempts} attempts")
            log(f"killed the worker container (SIGKILL) with job {job.id} running at {at_kill.attempts}/{budget}")
            time.sleep(2)
            check(self.inspect(cid, "{{.State.Running}}") == "false", "the killed worker container runs again")

            # No worker: the API still answers, takes a job, and reports healthy.
            import httpx
            check(httpx.get(f"{self.api}/healthz", timeout=5).status_code == 200, "/healthz without a worker")
            check(httpx.get(f"{self.api}/readyz", timeout=5).status_code == 200, "/readyz without a worker")
            waiting = self.sdpo("submit", str(self.work / "say-hello.json"), "--wait", "--json", "--budget", "8", "--settings",
                                str(self.work / "settings.json"), "--no-baseline")
            queued = wait_for("the job submitted without a worker", lambda: [
                j for j in client.list(status="queued").data if j.id != job.id], timeout=60)[0]
            check(self.health("api") == "healthy", "the API is not healthy while no worker runs")
            log(f"no worker: /healthz and /readyz answer 200; `sdpo submit --wait` queued job {queued.id}")

            # Redis restarts with one job mid-run (its worker dead) and one queued.
            run([self.docker, "restart", "--time", "20", self.container("redis")])
            self.wait_healthy(("redis",), timeout=120)
            after = {j: client.get(j) for j in (job.id, queued.id)}
            check(after[job.id].status == "running" and after[job.id].attempts == at_kill.attempts,
                  f"after the Redis restart the killed job is {after[job.id].status} at {after[job.id].attempts}")
            check(after[queued.id].status == "queued",
                  f"after the Redis restart the queued job is {after[queued.id].status}")
            log("redis restarted: the running job and the queued job are both still there")

            # A new worker container reclaims the killed job once its lease has run out and resumes it.
            self.compose("rm", "--force", "--stop", "worker")
            self.compose("up", "-d", "--no-build", "--pull", "never", "worker")
            new_cid = self.container("worker")
            check(new_cid != cid, "the worker is not a new container")
            final = client.wait(job.id, timeout=600, poll_s=1)
            out, err = waiting.communicate(timeout=600)
            check(waiting.returncode == 0, f"sdpo submit --wait exited {waiting.returncode}: {err[-2000:]}")
            second = json.loads(out)
            check(second["status"] in ("succeeded", "exhausted"),
                  f"the job submitted without a worker ended {second['status']}: {second.get('error')}")
            check(final.status == "exhausted", f"the killed job ended {final.status}: {final.error}\n"
                  f"{self.worker_logs()}")
            indices = [a.index for a in client.attempts(job.id)]
            check(indices == list(range(1, budget + 1)), f"attempts lost or recorded twice: {indices}")
            check(final.attempts == budget, f"the job counted {final.attempts} attempts of {budget}")
            events = client.event_page(job.id, limit=1000).data
            resumed = [e.data for e in events if e.type == "resumed"]
            tries = [e.data["try"] for e in events if e.type == "status" and "try" in e.data]
            check(len(resumed) == 1 and resumed[0]["attempts"] > 0, f"resumed events: {resumed}")
            check(tries == [1, 2], f"the job was started {tries} times, not [1, 2]")
            steps = [e.data["attempts"] for e in events if e.type == "progress" and e.data.get("type") == "step"
                     and e.data.get("run") == "method"]
            check(steps and steps[-1] == budget, f"step progress {steps}")
        self.wait_healthy(("worker",), timeout=300)
        self.record("kill_resume", f"{budget}/{budget} attempts once, resumed at attempt {resumed[0]['attempts']}, "
                    "started twice")
        self.record("redis_restart", "no job lost")
        self.record("no_worker", f"API answered, its job {second['status']} once a worker returned")
        log(f"a new worker container resumed job {job.id} at attempt {resumed[0]['attempts']}: {final.status} with "
            f"attempts 1..{budget} once each; the job submitted without a worker {second['status']}")


def stack(compose: list[str], work: Path, results: Path) -> None:
    checks = Stack(compose, work, results)
    checks.up()
    checks.redis_as_shipped()
    checks.worker_as_shipped()
    checks.job_end_to_end()
    checks.hostile()
    checks.faults()


# ---- inside a worker container ---------------------------------------------------------------------------------
def hostile_inside(helpers: Path, checkpoints: Path | None, expect: str) -> dict:
    """Run tests/hostile_as_deployed.py as this container's user and judge its report as
    tests/test_sandbox_as_deployed.py does on a host: `contained` (each program ran and its attack found nothing) or
    `refused` (none ran: the fail-closed answer where bubblewrap cannot start). Either way nothing may escape."""
    import socket
    import tempfile
    sys.path.insert(0, str(helpers))
    from sandbox_helpers import ESCAPE_ATTACKS, host_bait

    attacks = ("reads the worker's secrets", "writes the checkpoint volume", "connects to the host",
               "leaves a process behind", *ESCAPE_ATTACKS)
    # The worker's own secret where there is one (the running worker's checkpoint key), else a stand-in.
    secret = os.environ.get("SDPO_CHECKPOINT_KEY") or "sdpo-image-check-secret-5c1a"
    checkpoints = checkpoints or Path(tempfile.mkdtemp(prefix="sdpo-checkpoints-"))
    before = set(os.listdir(checkpoints))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    with host_bait() as bait:
        env = {**os.environ, "SDPO_TEST_SERVICE_SECRET": secret, "HOME": tempfile.mkdtemp(prefix="sdpo-home-")}
        done = subprocess.run([sys.executable, str(helpers / "hostile_as_deployed.py"), str(checkpoints),
                               str(listener.getsockname()[1]), str(bait.directory)], env=env, capture_output=True,
                              text=True, timeout=300)
        report = json.loads(done.stdout.splitlines()[0]) if done.stdout.strip() else {}
        time.sleep(4)  # longer than the would-be survivor waits before writing
        escaped = bait.escapes()
    with contextlib.suppress(BlockingIOError):
        listener.accept()[0].close()
        escaped.append("a connection to the listener on 127.0.0.1")
    listener.close()
    if not report:
        return {"ok": False, "expect": expect, "attacks": [], "problems": [f"no report: {done.stderr[-3000:]}"]}
    problems = [f"escaped: {e}" for e in escaped]
    problems += [f"left in the checkpoint volume: {name}" for name in sorted(set(os.listdir(checkpoints)) - before)]
    if secret in json.dumps(report) or bait.secret in json.dumps(report):
        problems.append("a secret or the bait file reached the report")
    if report.get("environ readable") != {"worker": False, "pool": False}:
        problems.append(f"environ readable: {report.get('environ readable')}")
    if "worker alive" not in done.stdout:
        problems.append("a hostile program killed the process that ran it")
    if report.get("uid") != 10001:
        problems.append(f"ran as uid {report.get('uid')}, not 10001")
    for attack in attacks:
        verdict = report.get(attack) or {}
        refused = not verdict.get("solved") and str(verdict.get("feedback", "")).startswith(
            "Not run: code-running verifiers are refused")
        if (expect == "contained" and not verdict.get("solved")) or (expect == "refused" and not refused):
            problems.append(f"{attack}: {verdict}")
    if expect == "contained" and report.get("job") != "accepted":
        problems.append(f"the job was not accepted: {report.get('job')}")
    if expect == "refused" and not str(report.get("job", "")).startswith("SandboxRefused"):
        problems.append(f"the job was not refused: {report.get('job')}")
    breached = [attack for attack in attacks if any(p.startswith(f"{attack}: ") for p in problems)]
    return {"ok": not problems, "expect": expect, "attacks": list(attacks), "problems": problems,
            "breached": breached, "proc mounted": report.get("proc mounted")}


# ---- the summary ----------------------------------------------------------------------------------------------
def summary(results: Path) -> str:
    r = read_env(results)
    images = (f"images built (api {int(r['api_image_mb']) / 1000:.2f} GB in {r['build_api_s']} s with "
              f"{r.get('build_api_cached', '?')} steps from the cache, cpu-worker {int(r['worker_image_mb']) / 1000:.2f} "
              f"GB in {r['build_cpu_worker_s']} s, redis {r['redis_image_mb']} MB; gpu-worker {r['gpu_worker']})")
    if "job" not in r:
        return f"test-images held: {images}; the stack was not started"
    return (f"test-images held: {images}; stack healthy in {r['healthy_s']} s; job solved ({r['job']}, curve and "
            f"adapter, {r['job_s']} s); hostile programs: {r['hostile']}; kill/resume exact ({r['kill_resume']}); "
            f"Redis restart: {r['redis_restart']}; no worker: {r['no_worker']}; total {r['total_s']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("wheel-index")
    p.add_argument("directory", type=Path)
    p = sub.add_parser("stack")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("compose", nargs=argparse.REMAINDER, help="-- then the compose command with its -p/-f options")
    p = sub.add_parser("hostile-inside")
    p.add_argument("helpers", type=Path, help="the folder of hostile_as_deployed.py and sandbox_helpers.py")
    p.add_argument("--checkpoints", type=Path, help="the checkpoint volume (default: a fresh folder)")
    p.add_argument("--expect", choices=["contained", "refused"], required=True)
    p = sub.add_parser("summary")
    p.add_argument("--results", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "wheel-index":
        wheel_index(args.directory)
    elif args.command == "stack":
        compose = args.compose[1:] if args.compose[:1] == ["--"] else args.compose
        if not compose:
            parser.error("stack: give the compose command after --")
        try:
            stack(compose, args.work, args.results)
        except CheckFailed as failure:
            log(f"FAILED: {failure}")
            return 1
    elif args.command == "hostile-inside":
        print(json.dumps(hostile_inside(args.helpers, args.checkpoints, args.expect)), flush=True)
    else:
        print(summary(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
