"""rainctl.health.probes against servers of this test on loopback; the monitor counting and
reporting; the worker process, which ends when its input does."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from rainctl.config.health import CheckKind, EffectiveCheck
from rainctl.core.events import HealthObserved
from rainctl.core.health import HealthState, ServerOpinion
from rainctl.core.types import RingId
from rainctl.health.monitor import HealthMonitor
from rainctl.health.probes import ProbeTarget, parse_agent_reply, probe
from rainctl.health.results import ProbeResult
from rainctl.health.targets import CheckTarget
from rainctl.health.tcp import TcpProber
from rainctl.health.worker import HealthWorker

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            result = handler(reader, writer)
            if asyncio.iscoroutine(result):
                await result
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def http_answer(status: int, body: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    return handler


def target(port: int) -> ProbeTarget:
    return ProbeTarget("127.0.0.1", port, "198.18.0.100", 80, port)


def run_probe(check: EffectiveCheck, handler: Handler | None) -> tuple[bool, str]:
    async def main() -> tuple[bool, str]:
        scripts = asyncio.Semaphore(2)
        tcp = TcpProber(asyncio.get_running_loop())
        try:
            if handler is None:
                async with serving(lambda r, w: None) as port:
                    pass  # closed again: nothing listens on `port`
                result = await probe(target(port), check, scripts, tcp)
                return result.passed, result.detail
            async with serving(handler) as port:
                result = await probe(target(port), check, scripts, tcp)
                return result.passed, result.detail
        finally:
            assert tcp.in_flight() == 0
            tcp.close()

    return asyncio.run(main())


def test_tcp_passes_on_a_listener_and_fails_refused_without_one() -> None:
    check = EffectiveCheck(kind=CheckKind.TCP)
    assert run_probe(check, lambda r, w: None) == (True, "connected")
    assert run_probe(check, None) == (False, "refused")


@contextmanager
def full_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full (nobody accepts): it drops SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    waiting = [socket.socket() for _ in range(3)]
    for client in waiting:
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
    try:
        yield port
    finally:
        for client in [listener, *waiting]:
            client.close()


def test_tcp_times_out_on_a_listener_whose_queue_is_full() -> None:
    """A full accept queue drops SYNs: only the timeout answers (as for a dead link)."""

    async def main() -> list[ProbeResult]:
        results: list[ProbeResult] = []
        tcp = TcpProber(asyncio.get_running_loop())
        tcp.start("127.0.0.1", port, 150, results.append, asyncio.get_running_loop().time())
        assert results == []  # never answered from inside start()
        assert tcp.in_flight() == 1
        await asyncio.sleep(0.4)
        tcp.close()
        return results

    with full_listener() as port:
        (result,) = asyncio.run(main())
    assert (result.passed, result.detail) == (False, "timeout")
    assert 150 <= result.latency_ms < 400


def test_tcp_probes_abandoned_by_close_are_never_answered() -> None:

    async def main() -> list[ProbeResult]:
        results: list[ProbeResult] = []
        tcp = TcpProber(asyncio.get_running_loop())
        tcp.start("127.0.0.1", port, 100, results.append, asyncio.get_running_loop().time())
        tcp.close()
        await asyncio.sleep(0.3)
        return results

    with full_listener() as port:
        assert asyncio.run(main()) == []


@pytest.mark.parametrize(
    ("check", "status", "body", "expected"),
    [
        (EffectiveCheck(kind=CheckKind.HTTP), 200, b"ok", (True, "status 200")),
        (EffectiveCheck(kind=CheckKind.HTTP), 503, b"", (False, "status 503")),
        (
            EffectiveCheck(kind=CheckKind.HTTP, expect_status=(204,)),
            200,
            b"",
            (False, "status 200"),
        ),
        (
            EffectiveCheck(kind=CheckKind.HTTP, body_regex="ready"),
            200,
            b"not yet",
            (False, "status 200, body does not match"),
        ),
        (
            EffectiveCheck(kind=CheckKind.HTTP, body_regex="rea.y"),
            200,
            b"ready",
            (True, "status 200"),
        ),
    ],
)
def test_http_judges_status_and_body(
    check: EffectiveCheck, status: int, body: bytes, expected: tuple[bool, str]
) -> None:
    assert run_probe(check, http_answer(status, body)) == expected


def test_a_silent_server_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(1)

    check = EffectiveCheck(kind=CheckKind.HTTP, timeout_ms=100, interval_ms=500)
    assert run_probe(check, silent) == (False, "timeout")


def test_agent_words() -> None:
    assert parse_agent_reply("up 75%").weight_permille == 750
    assert parse_agent_reply("up 75%").declared is HealthState.UP
    assert parse_agent_reply("drain").declared is HealthState.DRAIN
    assert parse_agent_reply("MAINT").declared is HealthState.DOWN
    assert parse_agent_reply("ready,50%\n").weight_permille == 500
    assert parse_agent_reply("150%").weight_permille == 1000
    assert not parse_agent_reply("  ").passed
    assert parse_agent_reply("hello").declared is None

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"drain 20%\n")
        await writer.drain()

    check = EffectiveCheck(kind=CheckKind.AGENT, port=1)
    assert run_probe(check, agent) == (True, "agent: drain 20%")


def test_script_exit_status_and_timeout() -> None:
    ok = EffectiveCheck(
        kind=CheckKind.SCRIPT,
        command=(
            sys.executable,
            "-c",
            "import os,sys; sys.exit(os.environ['RAINCTL_CHECK_VIP'] != '198.18.0.100')",
        ),
    )
    assert run_probe(ok, lambda r, w: None) == (True, "exit 0")
    failing = EffectiveCheck(
        kind=CheckKind.SCRIPT, command=(sys.executable, "-c", "raise SystemExit(3)")
    )
    assert run_probe(failing, lambda r, w: None) == (False, "exit 3")
    slow = EffectiveCheck(
        kind=CheckKind.SCRIPT,
        command=(sys.executable, "-c", "import time; time.sleep(5)"),
        script_timeout_ms=200,
    )
    assert run_probe(slow, lambda r, w: None) == (False, "script timed out")


def test_the_monitor_counts_reports_and_closes() -> None:
    observed: list[HealthObserved] = []

    async def main() -> None:
        async with serving(lambda r, w: None) as port:
            pass  # nothing listens on `port` any more: the server is down after `fall` probes
        check = EffectiveCheck(kind=CheckKind.TCP, interval_ms=100, timeout_ms=50)
        server = CheckTarget(1234, "tcp 198.18.0.100:80", f"127.0.0.1:{port}", target(port),
                             check, 1)  # fmt: skip
        monitor = HealthMonitor(1, [server], 2, observed.append)
        monitor.set_ring(RingId(1, 1, 1), (1,))
        for _ in range(100):
            if observed and observed[-1].opinions[0].state is HealthState.DOWN:
                break
            await asyncio.sleep(0.05)
        snapshot = monitor.snapshot()
        await monitor.close()
        assert snapshot.checking[1234].state is HealthState.DOWN
        assert snapshot.checking[1234].detail == "refused"
        assert snapshot.checking[1234].counted  # `fall` failures of its own

    asyncio.run(main())
    # The first report, right after the assignment: not counted yet (an abstention).
    assert observed[0].opinions == (ServerOpinion(1234, HealthState.UNCOUNTED, 0),)
    assert observed[-1].opinions[0].state is HealthState.DOWN
    assert observed[-1].counted_for == RingId(1, 1, 1)


def test_a_silent_server_is_probed_again_before_the_first_probe_times_out() -> None:
    """Dead link: no answer at all. The second probe starts a fast interval after the first,
    not after its timeout, so `fall = 2` failures take one timeout plus a fast interval (1.25
    s here), not two timeouts (2 s)."""
    check = EffectiveCheck(kind=CheckKind.TCP, interval_ms=2000, timeout_ms=1000)
    assert check.fast_interval_ms == 250

    async def main(port: int) -> float:
        observed: list[HealthObserved] = []
        server = CheckTarget(1, "tcp 198.18.0.100:80", f"127.0.0.1:{port}", target(port),
                             check, 1)  # fmt: skip
        monitor = HealthMonitor(1, [server], 1, observed.append)
        started = asyncio.get_running_loop().time()
        monitor.set_ring(RingId(1, 1, 1), (1,))
        while not any(o.opinions and o.opinions[0].state is HealthState.DOWN for o in observed):
            await asyncio.sleep(0.01)
        took = asyncio.get_running_loop().time() - started
        await monitor.close()
        return took

    with full_listener() as port:
        took = asyncio.run(main(port))
    assert 1.2 <= took < 1.75, took


def test_the_worker_process_checks_and_ends_with_its_input(tmp_path: Path) -> None:
    async def main() -> tuple[list[HealthObserved], HealthWorker]:
        async with serving(lambda r, w: None) as port:
            pass
        config = tmp_path / "cluster.toml"
        config.write_text(
            '[cluster]\nname = "w"\nid = 1\n[[nodes]]\nid = 1\naddress = "127.0.0.1:7400"\n'
            '[[vips]]\naddress = "198.18.0.100"\n[[services]]\nvip = "198.18.0.100"\n'
            "port = 80\n[services.health]\ninterval_ms = 100\ntimeout_ms = 50\n"
            f'[[services.real_servers]]\naddress = "127.0.0.1"\nport = {port}\n'
            'forwarding = "nat"\n',
            encoding="utf-8",
        )
        observed: list[HealthObserved] = []
        worker = HealthWorker(config, 1, observed.append)
        await worker.start(needed=True)
        worker.set_ring(RingId(2, 1, 1), (1,))
        for _ in range(200):
            if (
                observed
                and observed[-1].opinions[0].state is HealthState.DOWN
                and (await worker.fresh_snapshot()).checking
            ):
                break
            await asyncio.sleep(0.05)
        await worker.stop()
        return observed, worker

    observed, worker = asyncio.run(main())
    assert observed[-1].opinions[0].state is HealthState.DOWN
    assert len(observed[-1].catalogue) == 1
    (check,) = worker.snapshot().checking.values()
    assert check.detail == "refused"
    assert check.counted
    pid = worker.pid()
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists()


def test_no_worker_runs_while_nothing_is_checked(tmp_path: Path) -> None:
    async def main() -> HealthWorker:
        worker = HealthWorker(tmp_path / "unused.toml", 1, lambda observed: None)
        await worker.start(needed=False)
        worker.set_ring(RingId(1, 1, 1), (1,))
        worker.reload(tmp_path / "unused.toml", needed=False)
        assert (await worker.fresh_snapshot()).checking == {}
        await worker.stop()
        return worker

    assert asyncio.run(main()).pid() is None
