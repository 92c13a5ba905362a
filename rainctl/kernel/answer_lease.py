"""The answer lease: a VIP answers ARP / neighbour solicitations only while the daemon keeps
saying so, enforced by the kernel in milliseconds (GOALS.md F8, docs/protocol.md section 8).

The address lease (`LinuxVipAddresses`, `vip_lease_s`) removes a dead or hung owner's VIPs
from its front interface, but address lifetimes are whole seconds, so a dead owner answers
ARP for up to a second or two after the survivors have taken its VIPs over. This adds a gate
that ends in milliseconds, shorter than the ring's own failure detection:

- an nftables table (`arp` family; `ip6` for IPv6 VIPs) drops every ARP request and every
  neighbour solicitation whose target is a *guarded* VIP (the pool) unless the VIP is in the
  *held* set; held elements carry a timeout, so they vanish by themselves;
- the daemon grants the owned VIPs (`grant`: flush the held sets and add the owned VIPs with
  a timeout of `lease_ms`, one transaction, so a renewal never opens a gap) and renews the
  grant several times per lease while the ring confirms the node. A daemon that is killed,
  frozen or cut off renews nothing: its VIPs stop answering `lease_ms` later, in the kernel,
  before the survivors' takeover completes.

Transactions go through one resident `nft -i` process (no fork per renewal: about 0.2 ms
of its CPU each; a renewal prints nothing). A grant also replaces the one element of the
set `ack` with `0.x.y.z`, the grant's sequence number, in the same transaction, and asks
nft to list that set: the listing tells that the grant is in the kernel. `grant` waits for
it (the reconciler announces a VIP only once it answers); `renew` does not wait and never
blocks (it runs on the ring's event loop).

The table survives the daemon on purpose: after a SIGKILL the guard stays and the held
elements run out. `open` replaces any earlier copy; `close` removes it. Kernels without the
`arp` family (the UML lab's guests: CONFIG_NF_TABLES_ARP is off) fail `open` with a
`KernelError`; the daemon then keeps the address lease alone and says so.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Collection, Sequence
from typing import IO

from rainctl.core.types import Vip
from rainctl.errors import KernelError
from rainctl.templating import render

__all__ = ["DEFAULT_TABLE", "NftAnswerLease"]

DEFAULT_TABLE = "rainctl_lease"
APPLY_TIMEOUT_S = 2.0
"""Longest a grant, or the table's set-up, waits for nft."""
ERROR_LOG_INTERVAL_S = 10.0
_SEQUENCE_SPACE = 1 << 24
_ACK = re.compile(r"elements = \{ 0\.(\d+)\.(\d+)\.(\d+) \}")

log = logging.getLogger("rainctl.kernel.answer_lease")


def _ip6_element(ip: ipaddress.IPv6Address) -> str:
    # The IPv6 sets are typed by the raw payload of the solicitation's target: integers.
    return f"0x{int(ip):032x}"


def _ack_element(sequence: int) -> str:
    value = sequence % _SEQUENCE_SPACE
    return f"0.{value >> 16}.{(value >> 8) & 0xFF}.{value & 0xFF}"


class NftAnswerLease:
    """`AnswerLease` through nftables, in the network namespace of the calling process."""

    def __init__(
        self, *, table: str = DEFAULT_TABLE, nft: str = "nft", realtime_priority: int = 0
    ) -> None:
        self.table = table
        self._nft = nft
        self._realtime_priority = realtime_priority
        """SCHED_RR priority of the nft process (0: normal), the daemon's own: a renewal nft
        applies late makes the lease last longer than the daemon that wrote it."""
        self._process: subprocess.Popen[bytes] | None = None
        self._pool6: frozenset[Vip] = frozenset()
        self._sequence = 0
        self._applied_sequence = -1
        self._applied = threading.Condition()
        self.last_error = ""
        """nft's last complaint (empty while every transaction went through)."""
        self.errors = 0

    # ---- AnswerLease -------------------------------------------------------------------------

    def guard(self, pool: Sequence[Vip]) -> None:
        """Guard exactly these VIPs (the table is made anew: nothing is held until a grant)."""
        pool4, pool6 = self._split(pool)
        ruleset = render(
            "answer_lease.nft.j2",
            table=self.table,
            pool4=sorted(pool4, key=ipaddress.IPv4Address),
            pool6=sorted(_ip6_element(ipaddress.IPv6Address(vip)) for vip in pool6),
        )
        self._run_file(ruleset)
        self._pool6 = pool6
        self._ensure_process()

    def grant(self, vips: Collection[Vip], lease_ms: int) -> None:
        """Exactly these VIPs answer for the next `lease_ms`; returns once the kernel has it.
        KernelError when nft complains meanwhile (e.g. the table is gone) or stays silent."""
        errors_before = self.errors
        sequence = self._send(vips, lease_ms, acknowledged=True)
        deadline = time.monotonic() + APPLY_TIMEOUT_S
        with self._applied:
            while not self._is_applied(sequence):
                if self.errors != errors_before:
                    raise KernelError(f"nft refused the answer lease: {self.last_error}")
                process = self._process
                remaining = deadline - time.monotonic()
                if remaining <= 0 or process is None or process.poll() is not None:
                    raise KernelError(
                        f"nftables did not apply the answer lease within {APPLY_TIMEOUT_S} s"
                        + (f": {self.last_error}" if self.last_error else "")
                    )
                self._applied.wait(min(remaining, 0.1))

    def renew(self, vips: Collection[Vip], lease_ms: int) -> None:
        """`grant` without waiting; never blocks (a full pipe to nft is an error)."""
        self._send(vips, lease_ms)

    def close(self) -> None:
        """Remove the guard (every VIP answers as its address says) and end nft."""
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(timeout=APPLY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._run_file(
            f"table arp {self.table}\ndelete table arp {self.table}\n"
            f"table ip6 {self.table}\ndelete table ip6 {self.table}\n"
        )

    # ---- the nft process ---------------------------------------------------------------------

    def _split(self, vips: Collection[Vip]) -> tuple[frozenset[Vip], frozenset[Vip]]:
        v4 = frozenset(vip for vip in vips if ":" not in vip)
        return v4, frozenset(vips) - v4

    def _lines(self, vips: Collection[Vip], lease_ms: int, acknowledged: int | None) -> str:
        held4, held6 = self._split(vips)
        timeout = f" timeout {lease_ms}ms"
        commands = [f"flush set arp {self.table} held"]
        if held4:
            elements4 = (vip + timeout for vip in sorted(held4))
            commands.append(f"add element arp {self.table} held {{ {', '.join(elements4)} }}")
        if self._pool6:
            commands.append(f"flush set ip6 {self.table} held")
            if held6:
                elements6 = (
                    _ip6_element(ipaddress.IPv6Address(vip)) + timeout for vip in sorted(held6)
                )
                commands.append(f"add element ip6 {self.table} held {{ {', '.join(elements6)} }}")
        if acknowledged is None:
            return "; ".join(commands) + "\n"
        commands += [
            f"flush set arp {self.table} ack",
            f"add element arp {self.table} ack {{ {_ack_element(acknowledged)} }}",
        ]
        return "; ".join(commands) + f"\nlist set arp {self.table} ack\n"

    def _send(self, vips: Collection[Vip], lease_ms: int, *, acknowledged: bool = False) -> int:
        process = self._ensure_process()
        self._sequence += 1
        sequence = self._sequence if acknowledged else None
        line = self._lines(vips, lease_ms, sequence).encode()
        assert process.stdin is not None
        try:
            written = os.write(process.stdin.fileno(), line)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:
            self._process = None
            raise KernelError(f"nft ended: {self.last_error or 'no message'}") from None
        if written != len(line):
            # A partial line would corrupt the next one: restart nft rather than guess.
            self._stop(process)
            raise KernelError("nft is not keeping up with the answer lease; restarting it")
        return self._sequence

    def _is_applied(self, sequence: int) -> bool:
        # Sequence numbers wrap at 2^24; a grant waits for at most a handful of them.
        return (self._applied_sequence - sequence) % _SEQUENCE_SPACE < _SEQUENCE_SPACE // 2

    def _ensure_process(self) -> subprocess.Popen[bytes]:
        if self._process is not None and self._process.poll() is None:
            return self._process
        binary = shutil.which(self._nft)
        if binary is None:
            raise KernelError(f"{self._nft}: not found (the answer lease needs nftables)")
        process = subprocess.Popen(  # noqa: S603 (nft's own path, fixed arguments)
            [binary, "-i"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        assert process.stderr is not None
        if self._realtime_priority:
            try:
                os.sched_setscheduler(
                    process.pid, os.SCHED_RR, os.sched_param(self._realtime_priority)
                )
            except OSError as exc:
                log.warning("nft keeps a normal priority: %s", exc)
        os.set_blocking(process.stdin.fileno(), False)
        threading.Thread(
            target=self._read_acks, args=(process.stdout,), name="nft-acks", daemon=True
        ).start()
        threading.Thread(
            target=self._read_errors, args=(process.stderr,), name="nft-errors", daemon=True
        ).start()
        self._process = process
        return process

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
        process.kill()
        process.wait()
        if self._process is process:
            self._process = None

    def _read_acks(self, stream: IO[bytes]) -> None:
        for raw in stream:
            match = _ACK.search(raw.decode(errors="replace"))
            if match is None:
                continue
            a, b, c = (int(part) for part in match.groups())
            with self._applied:
                self._applied_sequence = (a << 16) | (b << 8) | c
                self._applied.notify_all()
        with self._applied:
            self._applied.notify_all()

    def _read_errors(self, stream: IO[bytes]) -> None:
        logged_at = -ERROR_LOG_INTERVAL_S
        for raw in stream:
            text = raw.decode(errors="replace").strip()
            if not text.startswith("Error"):
                continue
            # A broken table fails every renewal: say so when it changes or now and then.
            now = time.monotonic()
            if text != self.last_error or now - logged_at >= ERROR_LOG_INTERVAL_S:
                log.warning("nft: %s (%d errors so far)", text, self.errors + 1)
                logged_at = now
            with self._applied:
                self.errors += 1
                self.last_error = text
                self._applied.notify_all()

    def _run_file(self, ruleset: str) -> None:
        binary = shutil.which(self._nft)
        if binary is None:
            raise KernelError(f"{self._nft}: not found (the answer lease needs nftables)")
        try:
            result = subprocess.run(  # noqa: S603 (nft's own path, fixed arguments)
                [binary, "-f", "-"],
                input=ruleset,
                capture_output=True,
                text=True,
                timeout=APPLY_TIMEOUT_S * 5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise KernelError(f"nft -f did not finish within {APPLY_TIMEOUT_S * 5} s") from None
        if result.returncode != 0:
            first = next((line for line in result.stderr.splitlines() if line.strip()), "")
            if "No such file or directory" in result.stderr or "not supported" in result.stderr:
                first += " (does this kernel have nftables' arp and ip6 families?)"
            raise KernelError(f"nft: {first or f'exit status {result.returncode}'}")
