"""A two-namespace LAN for the contract tests of the Linux adapters.

`node` holds the adapter's front interface (`front0`, 198.18.0.1/24, 2001:db8:5:1::1/64);
`peer` plays the LAN (`lan0`, 198.18.0.2/24, the other end of the veth pair). Only
documentation / benchmarking prefixes, only inside namespaces created here and deleted on
exit (deleting a namespace deletes its links). Root is required; the tests never skip.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from pyroute2 import netns

from tests.tags import RUN_TAG

FRONT = "front0"
PEER_IF = "lan0"
NODE_ADDRESS = "198.18.0.1/24"
PEER_ADDRESS = "198.18.0.2/24"
NODE_ADDRESS6 = "2001:db8:5:1::1/64"
_counter = itertools.count()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "the contract tests of the Linux kernel adapters need root (CAP_NET_ADMIN and "
            "CAP_NET_RAW in fresh network namespaces); run pytest as root, as CI does",
            pytrace=False,
        )


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@dataclass(frozen=True, slots=True)
class Lan:
    node: str
    peer: str

    def node_ip(self, *argv: str) -> str:
        return run("ip", "-n", self.node, *argv).stdout

    def peer_ip(self, *argv: str) -> str:
        return run("ip", "-n", self.peer, *argv).stdout

    def front_mac(self) -> str:
        match = re.search(r"link/ether ([0-9a-f:]{17})", self.node_ip("link", "show", FRONT))
        assert match, "front0 has no MAC"
        return match.group(1)

    def peer_neighbour_mac(self, address: str) -> str | None:
        output = self.peer_ip("neigh", "show", address, "dev", PEER_IF)
        match = re.search(r"lladdr ([0-9a-f:]{17})", output)
        return match.group(1) if match else None

    def arping_reply_mac(self, address: str) -> str | None:
        """ARP request from the peer; the MAC of the first reply, or None if none came."""
        done = run(
            "ip", "netns", "exec", self.peer,
            "arping", "-c", "2", "-w", "2", "-I", PEER_IF, address,
            check=False,
        )  # fmt: skip
        match = re.search(r"reply from \S+ \[([0-9A-Fa-f:]{17})\]", done.stdout)
        return match.group(1).lower() if match else None


@contextmanager
def lan() -> Iterator[Lan]:
    require_root()
    tag = f"{RUN_TAG}-{next(_counter)}"
    net = Lan(node=f"rctc-node-{tag}", peer=f"rctc-peer-{tag}")
    try:
        for name in (net.node, net.peer):
            run("ip", "netns", "add", name)
            run("ip", "-n", name, "link", "set", "lo", "up")
            # No DAD on the test links: their IPv6 is usable as soon as they are up.
            for conf in ("all", "default"):
                run("ip", "netns", "exec", name, "sysctl", "-qw",
                    f"net.ipv6.conf.{conf}.accept_dad=0")  # fmt: skip
        run("ip", "-n", net.node, "link", "add", FRONT, "type", "veth",
            "peer", "name", PEER_IF, "netns", net.peer)  # fmt: skip
        net.node_ip("address", "add", NODE_ADDRESS, "dev", FRONT)
        net.node_ip("address", "add", NODE_ADDRESS6, "dev", FRONT, "nodad")
        net.node_ip("link", "set", FRONT, "up")
        net.peer_ip("address", "add", PEER_ADDRESS, "dev", PEER_IF)
        net.peer_ip("link", "set", PEER_IF, "up")
        _wait_until_ready(net)
        yield net
    finally:
        for name in (net.node, net.peer):
            run("ip", "netns", "delete", name, check=False)


def _wait_until_ready(net: Lan) -> None:
    """Both ends up with a usable link-local address (the kernel starts the link's IPv6
    and transmit queue shortly after carrier, asynchronously)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        shown = net.node_ip("address", "show", FRONT) + net.peer_ip("address", "show", PEER_IF)
        if (
            shown.count("state UP") == 2
            and shown.count("scope link") == 2
            and ("tentative" not in shown)
        ):
            return
        time.sleep(0.02)
    pytest.fail(f"the test LAN did not come up within 5 s:\n{shown}", pytrace=False)


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Run the calling thread in the namespace: netlink, /proc/sys/net and sockets opened
    meanwhile belong to it."""
    netns.pushns(namespace)
    try:
        yield
    finally:
        netns.popns()
