"""One probe of one real server, as asyncio work (no process, except `script`).

Every probe is bounded by the check's timeout (a script by its own `script_timeout_ms`) and
answers a `ProbeResult`: passed or not, the time it took and a short reason for the status
and the log ("refused", "timeout", "status 503", ...). An agent (HAProxy's agent-check
protocol: the agent writes one line of words such as "up", "drain", "maint", "75%" and
closes) declares a state and a weight instead of passing or failing a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import h11

from rainctl.config.health import CheckKind, EffectiveCheck
from rainctl.core.health import HealthState
from rainctl.health.results import ProbeResult, since_ms
from rainctl.health.tcp import TcpProber

BODY_BYTES_MAX = 65536
"""An HTTP check reads at most this much of the body (for `body_regex`)."""
AGENT_LINE_BYTES_MAX = 1024
_READ_BYTES = 8192
_AGENT_PERCENT = re.compile(r"(\d{1,3})%")


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    address: str
    port: int
    """The port probed (the check's port, else the real server's)."""
    vip: str
    service_port: int
    server_port: int


async def probe(
    target: ProbeTarget, check: EffectiveCheck, scripts: asyncio.Semaphore, tcp: TcpProber
) -> ProbeResult:
    """One probe of any kind (the monitor starts TCP probes on `tcp` itself, without a
    coroutine: rainctl.health.tcp)."""
    started = time.monotonic()
    try:
        if check.kind is CheckKind.SCRIPT:
            async with scripts:
                started = time.monotonic()
                return await _script(target, check, started)
        timeout_s = check.timeout_ms / 1000
        if check.kind is CheckKind.TCP:
            loop = asyncio.get_running_loop()
            answered: asyncio.Future[ProbeResult] = loop.create_future()
            resolve = _resolver(answered)
            tcp.start(target.address, target.port, check.timeout_ms, resolve, loop.time())
            return await answered
        if check.kind in (CheckKind.HTTP, CheckKind.HTTPS):
            result = await asyncio.wait_for(_http(target, check), timeout_s)
        elif check.kind is CheckKind.AGENT:
            result = await asyncio.wait_for(_agent(target), timeout_s)
        else:
            result = ProbeResult(True, 0, "not checked")
    except TimeoutError:
        return ProbeResult(False, since_ms(started), "timeout")
    except ConnectionRefusedError:
        return ProbeResult(False, since_ms(started), "refused")
    except (OSError, ssl.SSLError, h11.ProtocolError) as error:
        return ProbeResult(False, since_ms(started), _reason(error))
    return ProbeResult(
        result.passed, since_ms(started), result.detail, result.declared, result.weight_permille
    )


def _resolver(future: asyncio.Future[ProbeResult]) -> Callable[[ProbeResult], None]:
    """Set the result unless the waiter was cancelled meanwhile."""

    def resolve(result: ProbeResult) -> None:
        if not future.done():
            future.set_result(result)

    return resolve


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return type(error).__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _http(target: ProbeTarget, check: EffectiveCheck) -> ProbeResult:
    tls = _tls_context(check.tls_verify) if check.kind is CheckKind.HTTPS else None
    host = check.host or (f"[{target.address}]" if ":" in target.address else target.address)
    reader, writer = await asyncio.open_connection(
        target.address, target.port, ssl=tls, server_hostname=host if tls else None
    )
    try:
        connection = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method=check.method,
            target=check.path,
            headers=[("Host", host), ("User-Agent", "rainctl-health"), ("Connection", "close")],
        )
        writer.write(connection.send(request) + connection.send(h11.EndOfMessage()))
        await writer.drain()
        status: int | None = None
        body = bytearray()
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ_BYTES)
                connection.receive_data(data)
                if not data and status is None:
                    return ProbeResult(False, 0, "closed before a response")
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                if check.body_regex is None or check.method == "HEAD":
                    break
            elif isinstance(event, h11.Data):
                body += event.data[: BODY_BYTES_MAX - len(body)]
                if len(body) >= BODY_BYTES_MAX:
                    break
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    finally:
        await _close(writer)
    assert status is not None
    if not check.status_ok(status):
        return ProbeResult(False, 0, f"status {status}")
    text = body.decode("utf-8", "replace")
    if (
        check.body_regex is not None
        and check.method != "HEAD"
        and not re.search(check.body_regex, text)
    ):
        return ProbeResult(False, 0, f"status {status}, body does not match")
    return ProbeResult(True, 0, f"status {status}")


def parse_agent_reply(line: str) -> ProbeResult:
    """HAProxy's agent-check words: a state ("up"/"ready", "drain", "maint"/"down"/"stopped"/
    "fail") and/or a weight "NN%" (0..100), separated by spaces, commas or tabs; anything
    else is ignored, as HAProxy does. An empty reply is a failed probe."""
    words = [word for word in re.split(r"[\s,]+", line.strip().lower()) if word]
    if not words:
        return ProbeResult(False, 0, "agent: empty reply")
    declared: HealthState | None = None
    weight: int | None = None
    for word in words:
        if word in ("up", "ready"):
            declared = HealthState.UP
        elif word == "drain":
            declared = HealthState.DRAIN
        elif word in ("maint", "down", "stopped", "fail"):
            declared = HealthState.DOWN
        else:
            match = _AGENT_PERCENT.fullmatch(word)
            if match is not None:
                weight = min(100, int(match[1])) * 10
    return ProbeResult(True, 0, f"agent: {' '.join(words)}", declared, weight)


async def _agent(target: ProbeTarget) -> ProbeResult:
    reader, writer = await asyncio.open_connection(target.address, target.port)
    try:
        data = await reader.read(AGENT_LINE_BYTES_MAX)
    finally:
        await _close(writer)
    return parse_agent_reply(data.split(b"\n", 1)[0].decode("ascii", "replace"))


async def _script(target: ProbeTarget, check: EffectiveCheck, started: float) -> ProbeResult:
    environment = {
        **os.environ,
        "RAINCTL_CHECK_ADDRESS": target.address,
        "RAINCTL_CHECK_PORT": str(target.server_port),
        "RAINCTL_CHECK_VIP": target.vip,
        "RAINCTL_CHECK_VIP_PORT": str(target.service_port),
    }
    process = await asyncio.create_subprocess_exec(
        *check.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=environment,
    )
    try:
        code = await asyncio.wait_for(process.wait(), check.script_timeout_ms / 1000)
    except TimeoutError:
        process.kill()
        await process.wait()
        return ProbeResult(False, since_ms(started), "script timed out")
    if code == 0:
        return ProbeResult(True, since_ms(started), "exit 0")
    return ProbeResult(False, since_ms(started), f"exit {code}")
