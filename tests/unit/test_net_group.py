"""rainctl.net.group on the host's loopback: joining, leaving and changing the ring group,
the sender's multicast options, one-line errors. (Datagrams through a group between nodes:
tests/contract/test_ring_group_cluster.py, in namespaces joined by a bridge.)"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest

from rainctl.net.group import RingGroup, interface_index_of
from rainctl.net.transport import TransportError


def _group_of(sender: socket.socket) -> RingGroup:
    """A ring group for the unicast socket `sender`, bound on loopback."""
    return RingGroup(("127.0.0.1", sender.getsockname()[1]), sender, lambda _: None, Counter())


def test_the_interface_of_an_address_is_found_by_index() -> None:
    assert interface_index_of("127.0.0.1") == socket.if_nametoindex("lo")
    with pytest.raises(TransportError, match=r"^no interface holds the ring address 198\.18\."):
        interface_index_of("198.18.9.9")


def test_a_group_is_joined_changed_and_left_with_the_configuration() -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            group = _group_of(sender)
            assert (group.endpoint, group.receiver) == (None, None)
            group.want("239.192.74.9:7409")
            assert group.address == ("239.192.74.9", 7409)
            receiver = group.receiver
            group.want("239.192.74.9:7409")  # the same group: nothing to do
            assert group.receiver is receiver
            # Out of this machine's interface of the ring address, to the LAN only, no copy
            # looped back (a node would authenticate its own passes).
            interface = sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
            assert socket.inet_ntoa(interface) == "127.0.0.1"
            assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
            assert sender.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 0
            group.want("239.192.74.10:7410")
            assert group.address == ("239.192.74.10", 7410)
            group.want(None)
            assert (group.endpoint, group.receiver) == (None, None)

    asyncio.run(scenario())


def test_a_group_that_cannot_be_joined_is_one_error_and_no_group() -> None:
    async def scenario() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            group = _group_of(sender)
            with pytest.raises(TransportError) as raised:
                group.want("[ff02::7401]:7401")  # not the ring address's family
            assert str(raised.value) == (
                "cannot join the ring group [ff02::7401]:7401 on 127.0.0.1: Invalid argument"
            )
            assert (group.endpoint, group.receiver) == (None, None)
            group.want("239.192.74.9:7409")  # a later configuration still joins
            assert group.address == ("239.192.74.9", 7409)
            group.close()

    asyncio.run(scenario())
