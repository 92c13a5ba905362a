"""Judging a pushed configuration for one node (rainctl.config.live) and describing a change
(rainctl.config.changes)."""

from __future__ import annotations

import pytest

from rainctl.config import parse_config
from rainctl.config.changes import change_count, config_changes
from rainctl.config.live import NodeContext, document_digest, prepare_document
from rainctl.config.reread import ConfigRereader
from rainctl.errors import ConfigError
from tests.unit.test_config import CLUSTER, THREE_NODES, TWO_VIPS, document, nodes_toml, vips_toml

SERVICE = """
[[services]]
vip = "198.18.0.100"
port = 80
real_servers = [{ address = "198.18.1.11" }, { address = "198.18.1.12" }]
"""


def context(
    node_id: int = 2, *, interfaces: tuple[str, ...] = ("eth0",), fixed: bool = False
) -> NodeContext:
    return NodeContext(
        node_id, front_interface_fixed=fixed, interface_exists=lambda name: name in interfaces
    )


def prepare(text: str, running: str = document(), node: NodeContext | None = None) -> str:
    """The refusal of `text` by the node, or "" when it takes it."""
    try:
        prepared = prepare_document(
            text,
            "pushed.toml",
            reader=ConfigRereader(),
            running=parse_config(running, "running.toml"),
            context=node or context(),
        )
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message
        return message
    assert prepared.digest == document_digest(text)
    assert prepared.spec.config_digest == prepared.digest
    return ""


def test_vips_nodes_services_and_timers_change_live() -> None:
    more_vips = TWO_VIPS + vips_toml(("198.18.0.102", None))
    more_nodes = THREE_NODES + nodes_toml((4, "198.18.0.5:7400"))
    assert prepare(document(vips=more_vips)) == ""
    assert prepare(document(nodes=more_nodes)) == ""
    assert prepare(document(nodes=nodes_toml((1, "198.18.0.2:7400"), (2, "198.18.0.3:7400")))) == ""
    assert prepare(document(extra="[timers]\nround_ms = 50\n")) == ""
    assert prepare(document() + SERVICE) == ""
    assert prepare(document(cluster=CLUSTER + 'quorum = "none"\n')) == ""


@pytest.mark.parametrize(
    ("pushed", "expected"),
    [
        (
            document(cluster='[cluster]\nname = "edge-a"\nid = 43\n'),
            "cluster.id: 42 -> 43 cannot change",
        ),
        (
            document(cluster=CLUSTER + 'key_file = "other.key"\n'),
            "cluster.key_file: the key file is read at start",
        ),
        (
            document(cluster=CLUSTER + "vip_lease_s = 5\n"),
            "cluster.vip_lease_s: 1 -> 5 cannot change",
        ),
        (
            document(cluster=CLUSTER + "answer_lease_ms = 20\n"),
            "cluster.answer_lease_ms: (unset) -> 20 ms cannot change",
        ),
        (
            document(cluster=CLUSTER + 'quorum = "upstream"\nupstream = ["198.18.0.1"]\n'),
            'cluster.quorum: quorum "upstream" and its addresses are set at start',
        ),
        (
            document(
                nodes=nodes_toml(
                    (1, "198.18.0.2:7400"), (2, "198.18.0.9:7400"), (3, "198.18.0.4:7400")
                )
            ),
            "nodes[1].address: node 2 is bound to 198.18.0.3:7400",
        ),
        ("not toml at all", "pushed.toml: line 1 column 5"),
    ],
)
def test_what_cannot_change_live_is_refused_with_its_key(pushed: str, expected: str) -> None:
    refusal = prepare(pushed)
    assert refusal.startswith("pushed.toml: ")
    assert expected in refusal


def test_only_the_node_whose_interface_is_missing_refuses() -> None:
    nodes = THREE_NODES.replace(
        'address = "198.18.0.4:7400"\n',
        'address = "198.18.0.4:7400"\nfront_interface = "nosuch0"\n',
    )
    pushed = document(nodes=nodes)
    assert prepare(pushed, node=context(2)) == ""
    assert prepare(pushed, node=context(3)) == (
        "pushed.toml: nodes[2].front_interface: interface 'nosuch0' does not exist on node 3"
    )
    assert prepare(pushed, node=context(3, interfaces=("nosuch0",))) == ""


def test_a_front_interface_opened_at_start_cannot_move() -> None:
    def with_front(name: str) -> str:
        return document(
            nodes=THREE_NODES.replace(
                '"198.18.0.3:7400"\n', f'"198.18.0.3:7400"\nfront_interface = "{name}"\n'
            )
        )

    running = with_front("eth0")
    moved = with_front("eth1")
    both = context(2, interfaces=("eth0", "eth1"), fixed=True)
    assert "nodes[1].front_interface: node 2's VIPs are on 'eth0'" in prepare(moved, running, both)
    flag = context(2, interfaces=("eth0", "eth1"), fixed=False)  # --front-interface rules
    assert prepare(moved, running, flag) == ""


def test_changes_are_listed_per_section() -> None:
    before = parse_config(document() + SERVICE, "a")
    after = parse_config(
        document(
            extra="[timers]\nround_ms = 50\n",
            vips=vips_toml(("198.18.0.100", 2), ("198.18.0.102", None)),
            nodes=THREE_NODES + nodes_toml((4, "198.18.0.5:7400")),
        )
        + SERVICE.replace('"198.18.1.12"', '"198.18.1.13"'),
        "b",
    )
    changes = config_changes(before, after)
    assert changes == {
        "timers": ["round_ms: (unset) -> 50"],
        "nodes": ["+ node 4"],
        "vips": ["+ 198.18.0.102", "- 198.18.0.101", "~ 198.18.0.100: home"],
        "services": ["~ tcp 198.18.0.100:80: real_servers"],
    }
    assert change_count(changes) == 6
    assert config_changes(before, before) == {}
    # Formatting and comments are not changes.
    reformatted = parse_config("# a comment\n" + document() + SERVICE, "c")
    assert config_changes(before, reformatted) == {}
