"""webhook verifier against a real HTTP server on loopback (allowed by SDPO_WEBHOOK_ALLOW_PRIVATE=1)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdpo_core.problem import Problem
from sdpo_core.verifiers import build_verifier
from sdpo_core.verifiers.webhook import ALLOW_PRIVATE_ENV, embedded_ipv4, non_public, refusal

SECRET = "webhook-test-secret-0123456789"


class Endpoint:
    """A scripted endpoint: each request pops the next (status, body, delay_s); the last one repeats."""

    def __init__(self) -> None:
        self.script: list[tuple[int, bytes, float]] = [(200, b'{"reward": 1.0}', 0.0)]
        self.requests: list[tuple[dict[str, str], bytes]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.requests.append((dict(self.headers), body))
                status, reply, delay = endpoint.script.pop(0) if len(endpoint.script) > 1 else endpoint.script[0]
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass  # the client gave up first

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def endpoint(monkeypatch) -> Iterator[tuple[Endpoint, str]]:
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    state = Endpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}/verify"
    server.shutdown()
    server.server_close()


def webhook_problem(url: str, **overrides: object) -> Problem:
    verifier = {"type": "webhook", "url": url, "secret": SECRET, "timeout_s": 2.0, "max_retries": 2, **overrides}
    return Problem.model_validate({"id": "hook", "prompt": "Say hello.", "verifier": verifier})


def check(problem: Problem, completion: str = "hello"):
    return build_verifier(problem.verifier).verify(problem, completion)


def test_reward_and_feedback_come_from_the_endpoint(endpoint):
    state, url = endpoint
    state.script = [(200, b'{"reward": 0.5, "feedback": "half right"}', 0.0)]
    verdict = check(webhook_problem(url), "my attempt")
    assert (verdict.reward, verdict.solved, verdict.feedback) == (0.5, False, "half right")
    headers, body = state.requests[0]
    assert json.loads(body) == {"problem_id": "hook", "prompt": "Say hello.", "completion": "my attempt"}


def test_requests_carry_a_valid_hmac_signature(endpoint):
    state, url = endpoint
    check(webhook_problem(url))
    headers, body = state.requests[0]
    timestamp = headers["X-SDPO-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-SDPO-Signature"], f"sha256={expected}")
    assert abs(int(timestamp) - time.time()) < 60


def test_server_errors_are_retried_a_bounded_number_of_times(endpoint):
    state, url = endpoint
    state.script = [(503, b"{}", 0.0), (500, b"{}", 0.0), (200, b'{"reward": 1}', 0.0)]
    assert check(webhook_problem(url)).solved
    assert len(state.requests) == 3
    state.requests.clear()
    state.script = [(500, b"{}", 0.0)]
    verdict = check(webhook_problem(url, max_retries=1))
    assert verdict.reward == 0.0 and "HTTP 500 after 2 tries" in verdict.feedback
    assert len(state.requests) == 2


def test_client_errors_are_not_retried(endpoint):
    state, url = endpoint
    state.script = [(404, b"{}", 0.0)]
    verdict = check(webhook_problem(url))
    assert "HTTP 404" in verdict.feedback and len(state.requests) == 1


def test_a_slow_endpoint_times_out(endpoint):
    state, url = endpoint
    state.script = [(200, b'{"reward": 1}', 10.0)]
    started = time.monotonic()
    verdict = check(webhook_problem(url, timeout_s=0.5, max_retries=0))
    assert verdict.reward == 0.0 and "ReadTimeout" in verdict.feedback
    assert time.monotonic() - started < 8.0  # the 0.5 s timeout, not the 10 s answer


@pytest.mark.parametrize(("reply", "says"), [
    (b"not json", "not JSON"),
    (b'{"score": 1}', 'without a "reward"'),
    (b'{"reward": 7}', "not a number in [0, 1]"),
    (b'{"reward": "1"}', "not a number in [0, 1]"),
    (b'{"reward": 1, "feedback": ["x"]}', "not a string"),
    (b"[1, 2]", 'without a "reward"'),
])
def test_garbage_answers_give_reward_zero(endpoint, reply, says):
    state, url = endpoint
    state.script = [(200, reply, 0.0)]
    verdict = check(webhook_problem(url))
    assert verdict.reward == 0.0 and not verdict.solved and says in verdict.feedback


def test_redirects_are_not_followed(endpoint):
    state, url = endpoint
    state.script = [(302, b"{}", 0.0)]
    assert "HTTP 302" in check(webhook_problem(url)).feedback


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/v", "http://localhost:9/v", "http://10.1.2.3/v", "http://192.168.0.1/v",
    "http://169.254.169.254/latest/meta-data", "http://[::1]:9/v", "http://0.0.0.0:9/v",
])
def test_private_loopback_and_link_local_addresses_are_refused(monkeypatch, url):
    """Checked by resolving only: no connection is ever made to these addresses."""
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    assert "non-public address" in (refusal(url) or "")
    verdict = check(webhook_problem(url))
    assert verdict.reward == 0.0 and "was not called" in verdict.feedback and ALLOW_PRIVATE_ENV in verdict.feedback


# IPv6 forms that carry an IPv4 address (issue 17, item 7): each is screened as the IPv4 address it reaches.
EMBEDDING = [
    ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64, well-known prefix
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64 to the cloud metadata service
    ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
    ("2002:a00:1::", "10.0.0.1"),
    ("::7f00:1", "127.0.0.1"),  # IPv4-compatible
    ("::c0a8:1", "192.168.0.1"),
    ("::ffff:10.0.0.1", "10.0.0.1"),  # IPv4-mapped
    ("2001:0:808:808::80ff:fffe", "127.0.0.1"),  # Teredo: relay 8.8.8.8, client 127.0.0.1 (stored inverted)
]


@pytest.mark.parametrize(("address", "inner"), EMBEDDING)
def test_ipv6_forms_that_carry_a_private_ipv4_address_are_refused(monkeypatch, address, inner):
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    ip = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address(inner) in embedded_ipv4(ip)
    assert inner in (non_public(ip) or "")
    why = refusal(f"http://[{address}]:9/v") or ""
    assert "non-public address" in why and inner in why
    verdict = check(webhook_problem(f"http://[{address}]:9/v"))
    assert verdict.reward == 0.0 and "was not called" in verdict.feedback


def test_the_local_use_nat64_prefix_is_refused_whatever_it_carries(monkeypatch):
    """64:ff9b:1::/48 is an operator's own translator (RFC 8215), where the IPv4 part sits depends on its prefix
    length: the whole block is refused."""
    monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    for address in ("64:ff9b:1::808:808", "64:ff9b:1:7f00:1::"):
        assert "local-use NAT64" in (refusal(f"http://[{address}]:9/v") or "")


@pytest.mark.parametrize("address", ["64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700::1111",
                                     "8.8.8.8"])
def test_public_addresses_in_those_forms_pass_the_screen(address):
    assert non_public(ipaddress.ip_address(address)) is None


def test_the_operator_setting_allows_private_addresses(monkeypatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "1")
    assert refusal("http://127.0.0.1:9/v") is None


def rebinding_resolver(monkeypatch, name: str, answers: list[str]) -> list[str]:
    """Make `name` resolve to answers[0], then answers[1], ... (the last repeats): a DNS rebinding server's
    behaviour, which cannot be run here. Returns the list of addresses handed out, in order."""
    real = socket.getaddrinfo
    handed: list[str] = []

    def resolve(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        handed.append(answers[min(len(handed), len(answers) - 1)])
        return real(handed[-1], port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return handed


def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_called_there(endpoint, monkeypatch):
    """The check sees a public address; a second lookup would give loopback. The request must go to the checked
    address, so the endpoint on loopback never hears from it."""
    state, url = endpoint
    monkeypatch.delenv(ALLOW_PRIVATE_ENV)
    port = url.split(":")[2].split("/")[0]
    handed = rebinding_resolver(monkeypatch, "rebind.example", ["93.184.216.34", "127.0.0.1"])
    verdict = check(webhook_problem(f"http://rebind.example:{port}/verify", timeout_s=0.5, max_retries=1))
    assert state.requests == [], "the request went to the address of a second lookup"
    assert verdict.reward == 0.0 and "failed" in verdict.feedback
    assert handed == ["93.184.216.34"]  # one lookup, at the check


def test_the_pinned_request_keeps_the_host_name_in_the_host_header(endpoint, monkeypatch):
    state, url = endpoint
    port = url.split(":")[2].split("/")[0]
    rebinding_resolver(monkeypatch, "judge.example", ["127.0.0.1"])
    assert check(webhook_problem(f"http://judge.example:{port}/verify")).solved
    headers, _ = state.requests[0]
    assert headers["Host"] == f"judge.example:{port}"


def test_https_to_a_pinned_address_checks_the_certificate_against_the_host_name(tmp_path):
    """TLS to the checked address presents the URL's host name (SNI) and checks the certificate against it."""
    import ssl
    import subprocess

    import httpx

    from sdpo_core.verifiers.webhook import PinnedTarget, _send

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=hook.test", "-addext", "subjectAltName=DNS:hook.test"],
                   check=True, capture_output=True)
    state = Endpoint()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    server.socket = server_tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
            good = PinnedTarget(f"https://127.0.0.1:{port}/v", f"hook.test:{port}", "hook.test")
            assert _send(client, good, b"{}", {})[0] == 200
            with pytest.raises(httpx.ConnectError, match="Hostname mismatch"):
                _send(client, PinnedTarget(good.url, f"other.test:{port}", "other.test"), b"{}", {})
    finally:
        server.shutdown()
        server.server_close()
    assert state.requests[0][0]["Host"] == f"hook.test:{port}"
