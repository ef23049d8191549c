"""`webhook`: the attempt is POSTed to the user's URL, which answers {"reward", "feedback"}.

Each request body is signed: X-SDPO-Signature is "sha256=" + HMAC-SHA256(secret, timestamp + "." + body) and
X-SDPO-Timestamp the Unix time, so the receiver can check that the call comes from this service and is fresh.
Requests have a timeout, a bounded number of retries (on connection errors, timeouts, 429 and 5xx) and never follow
redirects. Private, loopback, link-local and other non-public addresses are refused, IPv6 forms that carry such an
IPv4 address included (NAT64, 6to4, Teredo, IPv4-mapped and -compatible), so a job cannot make the service probe
its own network, unless the operator sets SDPO_WEBHOOK_ALLOW_PRIVATE=1. The host name is resolved
once per verification, the addresses are checked, and the request goes to the checked address (the name kept in
the Host header and, for https, in TLS's SNI and certificate check): a name that resolves differently a moment
later (DNS rebinding) cannot redirect the call.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field

from sdpo_core.verifiers.base import Verdict, VerdictStatus, clip_feedback, verifier_failed

if TYPE_CHECKING:
    import httpx

    from sdpo_core.problem import Problem

ALLOW_PRIVATE_ENV = "SDPO_WEBHOOK_ALLOW_PRIVATE"
SIGNATURE_HEADER = "X-SDPO-Signature"
TIMESTAMP_HEADER = "X-SDPO-Timestamp"
MAX_RESPONSE_BYTES = 65_536
RETRY_BACKOFF_S = 0.5


class WebhookSpec(BaseModel):
    """An HTTP(S) endpoint that scores attempts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: Literal["webhook"] = "webhook"
    runs_code: ClassVar[bool] = False
    url: AnyHttpUrl = Field(description="Where attempts are POSTed as JSON.")
    secret: str = Field(min_length=16, max_length=512, description="Shared secret for the HMAC-SHA256 signature.")
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Per request.")
    max_retries: int = Field(default=2, ge=0, le=5, description="Extra tries after a failed request.")

    def worst_case_seconds(self) -> float:
        return (self.max_retries + 1) * (self.timeout_s + 2.0**self.max_retries)  # every try and its back-off

    def verify(self, problem: Problem, completion: str) -> Verdict:
        target = pin(str(self.url))
        if isinstance(target, str):
            return _broken(f"The webhook verifier was not called: {target}.")
        body = json.dumps({"problem_id": problem.id, "prompt": problem.question, "completion": completion}).encode()
        try:
            data = self._post(target, body)
        except WebhookFailed as exc:
            return _broken(f"The webhook verifier failed: {exc}.")
        return verdict_from_reply(data)

    def _post(self, target: PinnedTarget, body: bytes) -> Any:
        import httpx  # imported here: the spec is also loaded by light clients that never call webhooks

        last_error = "no request was made"
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as client:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1))
                try:
                    status, content = _send(client, target, body, sign(self.secret, body))
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__} after {attempt + 1} tries"
                    continue
                if status == 429 or status >= 500:
                    last_error = f"HTTP {status} after {attempt + 1} tries"
                    continue
                if status != 200:
                    raise WebhookFailed(f"it answered HTTP {status}")
                try:
                    return json.loads(content)
                except ValueError:
                    raise WebhookFailed("its answer is not JSON") from None
        raise WebhookFailed(last_error)


class WebhookFailed(RuntimeError):
    """The webhook could not give a usable answer."""


def sign(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The signature headers for `body`."""
    timestamp = str(int(time.time() if now is None else now))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: f"sha256={digest}", "Content-Type": "application/json"}


@dataclass(frozen=True)
class PinnedTarget:
    """Where one verification's requests go: the URL with its host replaced by the address that was checked."""

    url: str  # e.g. https://93.184.216.34/verify
    host: str  # the Host header: the URL's own host[:port]
    sni_hostname: str | None  # https: the name TLS presents and checks the certificate against


def _send(client: httpx.Client, target: PinnedTarget, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
    with client.stream("POST", target.url, content=body, headers={**headers, "Host": target.host},
                       extensions=extensions) as response:
        content = b""
        for chunk in response.iter_bytes():
            content += chunk
            if len(content) > MAX_RESPONSE_BYTES:
                raise WebhookFailed(f"its answer is longer than {MAX_RESPONSE_BYTES} bytes")
        return response.status_code, content


def pin(url: str) -> PinnedTarget | str:
    """Resolve `url`'s host once and check every address: the target to call, or why it may not be called."""
    import httpx

    parsed = urlsplit(url)
    host = parsed.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parsed.port or (443 if parsed.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"its host {host!r} does not resolve ({exc.strerror})"
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if os.environ.get(ALLOW_PRIVATE_ENV) != "1":
        for address in addresses:
            if (why := non_public(address)) is not None:
                return (f"{host} resolves to the non-public address {why}, which this service does not call "
                        f"(an operator can allow it with {ALLOW_PRIVATE_ENV}=1)")
    original = httpx.URL(url)
    return PinnedTarget(url=str(original.copy_with(host=str(addresses[0]))), host=original.netloc.decode("ascii"),
                        sni_hostname=host if parsed.scheme == "https" else None)


# IPv6 forms that carry an IPv4 address to a translator or tunnel, which then delivers to that IPv4 address.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: an operator's own translator, never public
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # RFC 4291 (deprecated): ::a.b.c.d


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses `address` reaches through NAT64, 6to4, Teredo, IPv4-mapped or IPv4-compatible forms."""
    found = [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)] if address in NAT64 or address in IPV4_COMPATIBLE else []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)  # the relay server and the (de-obfuscated) client
    return found


def non_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """`address` as the refusal names it when it is not a public unicast address, or None when it is. An IPv6
    address that carries an IPv4 address is screened as that IPv4 address too: `64:ff9b::7f00:1` is 127.0.0.1 to
    a NAT64 gateway, yet Python calls it global."""
    if address.version == 6:
        if address in NAT64_LOCAL:
            return f"{address} (a local-use NAT64 address)"
        for inner in embedded_ipv4(address):
            if non_public(inner) is not None:
                return f"{address} (it carries {inner})"
    return str(address) if not address.is_global or address.is_multicast else None


def refusal(url: str) -> str | None:
    """Why `url` may not be called (its host resolves to a non-public address), or None."""
    target = pin(url)
    return target if isinstance(target, str) else None


def verdict_from_reply(data: Any) -> Verdict:
    """A Verdict from the webhook's JSON: {"reward": number in [0, 1], "feedback"?: str, "solved"?: bool}."""
    if type(data) is not dict or "reward" not in data:
        return _broken('The webhook verifier answered without a "reward".')
    reward, feedback, solved = data["reward"], data.get("feedback", ""), data.get("solved")
    if type(reward) not in (int, float) or not math.isfinite(reward) or not 0.0 <= reward <= 1.0:
        return _broken("The webhook verifier answered a reward that is not a number in [0, 1].")
    if type(feedback) is not str:
        return _broken("The webhook verifier answered a feedback that is not a string.")
    return Verdict(
        reward=float(reward), solved=solved if type(solved) is bool else reward >= 1.0, feedback=clip_feedback(feedback)
    )


def _broken(message: str, status: VerdictStatus = "error") -> Verdict:
    return verifier_failed(message, status)
