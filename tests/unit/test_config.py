"""Cluster config files: loading, validation messages, conversion to `RingSpec`, digest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainctl.config import (
    ClusterConfig,
    answer_lease_ms,
    canonical_json,
    config_digest,
    key_file_path,
    load_config,
    parse_config,
    to_ring_spec,
)
from rainctl.core.spec import (
    ExclusionMode,
    Limits,
    NodeSpec,
    QuorumPolicy,
    RebalanceSpec,
    RingSpec,
    TimerProfile,
    VipSpec,
    derive_timers,
)
from rainctl.errors import ConfigError, RainctlError

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "cluster.example.toml"

CLUSTER = """\
[cluster]
name = "edge-a"
id = 42
"""


def nodes_toml(*entries: tuple[int, str]) -> str:
    return "".join(
        f'[[nodes]]\nid = {node_id}\naddress = "{address}"\n' for node_id, address in entries
    )


def vips_toml(*entries: tuple[str, int | None]) -> str:
    return "".join(
        f'[[vips]]\naddress = "{address}"\n' + ("" if home is None else f"home = {home}\n")
        for address, home in entries
    )


THREE_NODES = nodes_toml((1, "198.18.0.2:7400"), (2, "198.18.0.3:7400"), (3, "198.18.0.4:7400"))
TWO_VIPS = vips_toml(("198.18.0.100", 1), ("198.18.0.101", None))


def document(
    *,
    cluster: str = CLUSTER,
    extra: str = "",
    nodes: str = THREE_NODES,
    vips: str = TWO_VIPS,
) -> str:
    return "\n".join([cluster, extra, nodes, vips])


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cluster.toml")
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---- good files ------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults() -> None:
    config = parse_config(document(), "cluster.toml")
    assert config.cluster.name == "edge-a"
    assert config.cluster.id == 42
    assert config.cluster.key_file is None
    assert config.cluster.profile is TimerProfile.LAN
    assert config.cluster.quorum is QuorumPolicy.MAJORITY
    assert config.cluster.exclusion is ExclusionMode.CONSERVATIVE
    assert config.timers.overrides() == {}
    assert config.rebalance.enabled
    assert (config.rebalance.interval_ms, config.rebalance.dwell_ms) == (10_000, 30_000)
    assert config.rebalance.margin_permille == 200
    assert (config.rebalance.preempt, config.rebalance.settle_ms) == (True, 3000)
    assert [(node.id, node.address) for node in config.nodes] == [
        (1, "198.18.0.2:7400"),
        (2, "198.18.0.3:7400"),
        (3, "198.18.0.4:7400"),
    ]
    assert [(vip.address, vip.home) for vip in config.vips] == [
        ("198.18.0.100", 1),
        ("198.18.0.101", None),
    ]


def test_full_file_round_trips_into_a_ring_spec() -> None:
    text = document(
        cluster=CLUSTER
        + 'key_file = "cluster.key"\nprofile = "fast"\nquorum = "none"\n'
        + 'exclusion = "conservative"\n',
        extra="[timers]\nround_ms = 60\nhop_retries = 2\n\n"
        "[rebalance]\nenabled = false\ninterval_ms = 5000\ndwell_ms = 7000\n"
        "margin_permille = 150\npreempt = false\nsettle_ms = 500\n",
        nodes=nodes_toml((7, "[2001:DB8::7]:7400"), (3, "198.18.0.4:7401")),
        vips=vips_toml(("2001:db8:0::100", 7), ("198.18.0.101", None), ("198.18.0.100", 3)),
    )
    config = parse_config(text, "cluster.toml")
    spec = to_ring_spec(config)
    assert spec == RingSpec(
        cluster_id=42,
        nodes=(NodeSpec(3, "198.18.0.4:7401"), NodeSpec(7, "[2001:db8::7]:7400")),
        vips=(
            VipSpec("198.18.0.100", 3),
            VipSpec("198.18.0.101", None),
            VipSpec("2001:db8::100", 7),
        ),
        timers=derive_timers(TimerProfile.FAST, round_ms=60, hop_retries=2),
        quorum=QuorumPolicy.NONE,
        exclusion=ExclusionMode.CONSERVATIVE,
        rebalance=RebalanceSpec(
            enabled=False,
            interval_ms=5000,
            dwell_ms=7000,
            margin_permille=150,
            preempt=False,
            settle_ms=500,
        ),
        config_digest=config_digest(config),
        limits=Limits(),
    )


def test_every_timer_can_be_overridden() -> None:
    overrides = {
        "round_ms": 200,
        "ack_ms": 40,
        "hop_retries": 4,
        "token_loss_ms": 900,
        "sos_reply_ms": 70,
        "join_ms": 300,
        "boot_ms": 1500,
        "beacon_ms": 800,
    }
    timers = "[timers]\n" + "".join(f"{key} = {value}\n" for key, value in overrides.items())
    config = parse_config(document(extra=timers), "cluster.toml")
    assert config.timers.overrides() == overrides
    assert to_ring_spec(config).timers == derive_timers(TimerProfile.LAN, **overrides)


def test_the_shipped_example_is_valid() -> None:
    config = load_config(EXAMPLE)
    spec = to_ring_spec(config)
    assert spec.node_ids() == (1, 2, 3)
    assert all(vip.vip.startswith("198.18.") for vip in spec.vips)
    assert all(node.address.startswith("198.18.") for node in spec.nodes)


def test_upstream_policy_with_addresses() -> None:
    config = parse_config(
        document(cluster=CLUSTER + 'quorum = "upstream"\nupstream = ["2001:DB8::0:1"]\n'),
        "cluster.toml",
    )
    assert config.cluster.quorum is QuorumPolicy.UPSTREAM
    assert config.cluster.upstream == ("2001:db8::1",)
    assert to_ring_spec(config).quorum is QuorumPolicy.UPSTREAM


def test_a_ring_group_gives_the_ring_one_datagram_per_hop() -> None:
    config = parse_config(
        document(cluster=CLUSTER + 'ring_group = "239.192.74.1:07401"\n'), "cluster.toml"
    )
    assert config.cluster.ring_group == "239.192.74.1:7401"
    assert to_ring_spec(config).group_pass is True
    assert to_ring_spec(parse_config(document(), "cluster.toml")).group_pass is False


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("198.18.0.9:7401", "198.18.0.9 is not a multicast address"),
        ("239.192.74.1", "is not group:port with an IP address"),
        ("239.192.74.1:0", "port 0 is not in 1..65535"),
    ],
)
def test_a_ring_group_must_be_a_multicast_group_and_port(group: str, expected: str) -> None:
    message = error_of(document(cluster=CLUSTER + f'ring_group = "{group}"\n'))
    assert message.startswith(f"cluster.toml: cluster.ring_group: '{group}'")
    assert expected in message
    assert "\n" not in message


def test_addresses_are_canonicalised() -> None:
    config = parse_config(
        document(
            nodes=nodes_toml((1, "[2001:0DB8:0000::0001]:07400")),
            vips=vips_toml(("2001:DB8::00AB", None)),
        ),
        "cluster.toml",
    )
    assert config.nodes[0].address == "[2001:db8::1]:7400"
    assert config.vips[0].address == "2001:db8::ab"


def test_key_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = parse_config(document(cluster=CLUSTER + 'key_file = "k/cluster.key"\n'), "x")
    assert key_file_path(config, tmp_path / "cluster.toml") == tmp_path / "k" / "cluster.key"
    absolute = parse_config(document(cluster=CLUSTER + 'key_file = "/etc/c.key"\n'), "x")
    assert key_file_path(absolute, tmp_path / "cluster.toml") == Path("/etc/c.key")
    assert key_file_path(parse_config(document(), "x"), tmp_path / "cluster.toml") is None


def test_models_are_frozen() -> None:
    config = parse_config(document(), "cluster.toml")
    with pytest.raises(ValueError, match="frozen"):
        config.cluster.id = 7  # type: ignore[misc]


# ---- digest ----------------------------------------------------------------------------


def test_digest_is_sha256_of_canonical_json() -> None:
    config = parse_config(document(), "cluster.toml")
    canonical = canonical_json(config)
    assert config_digest(config) == hashlib.sha256(canonical).digest()
    assert to_ring_spec(config).config_digest == config_digest(config)
    decoded = json.loads(canonical)
    assert canonical == json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode()


def test_digest_ignores_presentation() -> None:
    reference = config_digest(parse_config(document(), "cluster.toml"))
    rewritten = (
        "# same cluster, written differently\n"
        '[cluster]\nid = 42\nname = "edge-a"\nprofile = "lan"\nquorum = "majority"\n\n'
        "[rebalance]\nmargin_permille = 200\nenabled = true\n\n"
        + vips_toml(("198.18.0.101", None), ("198.18.0.100", 1))
        + nodes_toml((3, "198.18.0.4:7400"), (1, "198.18.0.2:7400"), (2, "198.18.0.3:07400"))
    )
    assert config_digest(parse_config(rewritten, "other.toml")) == reference


@pytest.mark.parametrize(
    "changed",
    [
        document(cluster=CLUSTER.replace("42", "43")),
        document(cluster=CLUSTER.replace("edge-a", "edge-b")),
        document(cluster=CLUSTER + 'profile = "fast"\n'),
        document(cluster=CLUSTER + 'key_file = "/etc/rainctl/cluster.key"\n'),
        document(extra="[timers]\nround_ms = 110\n"),
        document(extra="[timers]\nround_ms = 100\n"),
        document(extra="[rebalance]\ndwell_ms = 30001\n"),
        document(vips=vips_toml(("198.18.0.100", 2), ("198.18.0.101", None))),
        document(vips=vips_toml(("198.18.0.100", 1))),
        document(nodes=THREE_NODES.replace("7400", "7401")),
    ],
)
def test_digest_changes_with_meaning(changed: str) -> None:
    reference = config_digest(parse_config(document(), "cluster.toml"))
    assert config_digest(parse_config(changed, "cluster.toml")) != reference


@given(
    node_ids=st.lists(st.integers(1, 65535), min_size=1, max_size=10, unique=True),
    data=st.data(),
)
def test_digest_does_not_depend_on_entry_order(node_ids: list[int], data: st.DataObject) -> None:
    entries = [(node_id, f"198.18.{node_id // 256}.{node_id % 256}:7400") for node_id in node_ids]
    shuffled = data.draw(st.permutations(entries))
    vips = [(f"198.19.0.{index}", node_ids[index % len(node_ids)]) for index in range(5)]
    shuffled_vips = data.draw(st.permutations(vips))
    first = parse_config(document(nodes=nodes_toml(*entries), vips=vips_toml(*vips)), "a")
    second = parse_config(
        document(nodes=nodes_toml(*shuffled), vips=vips_toml(*shuffled_vips)), "b"
    )
    assert config_digest(first) == config_digest(second)
    assert to_ring_spec(first) == to_ring_spec(second)


# ---- invalid files: one line naming the key ---------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            document(nodes=nodes_toml((1, "198.18.0.2:7400"), (1, "198.18.0.3:7400"))),
            "nodes[1].id: node 1 is already configured at nodes[0]",
            id="duplicate-node-id",
        ),
        pytest.param(
            document(nodes=nodes_toml((1, "198.18.0.2:7400"), (2, "198.18.0.2:7400"))),
            "nodes[1].address: '198.18.0.2:7400' is already used by nodes[0]",
            id="duplicate-node-address",
        ),
        pytest.param(
            document(
                nodes=nodes_toml((1, "[2001:db8::2]:7400"), (2, "[2001:DB8:0::2]:7400")),
                vips="",
            ),
            "nodes[1].address: '[2001:db8::2]:7400' is already used by nodes[0]",
            id="duplicate-node-address-after-canonicalisation",
        ),
        pytest.param(
            document(vips=vips_toml(("2001:db8::10", None), ("2001:DB8::0010", None))),
            "vips[1].address: '2001:db8::10' is already configured at vips[0]",
            id="duplicate-vip-after-canonicalisation",
        ),
        pytest.param(
            document(vips=vips_toml(("198.18.0.100", 9))),
            "vips[0].home: node 9 is not a configured node (configured: 1, 2, 3)",
            id="unknown-home",
        ),
        pytest.param(
            document(nodes="", vips=""),
            "nodes: at least one [[nodes]] entry is required",
            id="no-nodes",
        ),
        pytest.param(
            document(
                nodes=nodes_toml(
                    *((node_id, f"198.18.1.{node_id}:7400") for node_id in range(1, 66))
                ),
                vips="",
            ),
            "nodes: 65 nodes configured, at most 64 allowed",
            id="too-many-nodes",
        ),
        pytest.param(
            document(
                vips=vips_toml(*((f"198.19.{n // 256}.{n % 256}", None) for n in range(4097)))
            ),
            "vips: 4097 VIPs configured, at most 4096 allowed",
            id="too-many-vips",
        ),
        pytest.param(
            document(extra="[timers]\nround_ms = 20\n"),
            "timers.round_ms: ack_ms x hop_retries (30 x 3 = 90 ms) must be less than "
            "4 x round_ms (80 ms)",
            id="round-too-short-for-hop",
        ),
        pytest.param(
            document(extra="[timers]\nack_ms = 200\nround_ms = 100\n"),
            "timers.ack_ms: ack_ms x hop_retries (200 x 3 = 600 ms) must be less than "
            "4 x round_ms (400 ms)",
            id="ack-too-long",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'profile = "fast"\n', extra="[timers]\nhop_retries = 10\n"),
            "timers.hop_retries: ack_ms x hop_retries (20 x 10 = 200 ms) must be less than "
            "4 x round_ms (200 ms)",
            id="too-many-retries-for-round",
        ),
        pytest.param(
            document(extra="[timers]\ntoken_loss_ms = 100\n"),
            "timers.token_loss_ms: 100 ms must be greater than round_ms (100 ms)",
            id="token-loss-not-above-round",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'profile = "fast"\nanswer_lease_ms = 60\n'),
            "cluster.answer_lease_ms: 60 ms must be 0 (off) or from 10 ms to below the ring's "
            "hop failure time, ack_ms x hop_retries = 60 ms (a longer lease lets a dead owner "
            "answer after the takeover)",
            id="answer-lease-not-below-hop-failure",
        ),
        pytest.param(
            document(cluster=CLUSTER + "answer_lease_ms = 5\n"),
            "cluster.answer_lease_ms: 5 ms must be 0 (off) or from 10 ms to below the ring's "
            "hop failure time, ack_ms x hop_retries = 90 ms (a longer lease lets a dead owner "
            "answer after the takeover)",
            id="answer-lease-too-short",
        ),
        pytest.param(
            document(nodes=nodes_toml((1, "198.18.0.2:7400"), (1, "198.18.0.2:7400")), vips=""),
            "nodes[1].id: node 1 is already configured at nodes[0] (and 1 more error)",
            id="two-conflicts",
        ),
        pytest.param(
            document(
                nodes=nodes_toml((1, "198.18.0.2:7400"), (1, "198.18.0.2:7400")),
                vips=vips_toml(("198.18.0.100", 5)),
                extra="[timers]\ntoken_loss_ms = 1\n",
            ),
            "nodes[1].id: node 1 is already configured at nodes[0] (and 3 more errors)",
            id="four-conflicts",
        ),
        pytest.param(
            document(nodes="", vips=vips_toml(("198.18.0.100", 1))),
            "nodes: at least one [[nodes]] entry is required (and 1 more error)",
            id="home-without-nodes",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'quorum = "upstream"\n'),
            'cluster.upstream: quorum = "upstream" needs at least one address to check '
            "(e.g. the router)",
            id="upstream-policy-without-addresses",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'upstream = ["198.18.0.1"]\n'),
            'cluster.upstream: only used with quorum = "upstream" (quorum is "majority")',
            id="upstream-addresses-without-policy",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'ring_group = "[ff02::7401]:7401"\n'),
            "cluster.ring_group: '[ff02::7401]:7401' is IPv6, node 1's address "
            "'198.18.0.2:7400' (nodes[0]) is not: the group must be of the nodes' family",
            id="ring-group-of-another-family",
        ),
    ],
)
def test_cross_field_errors(text: str, expected: str) -> None:
    assert error_of(text) == f"cluster.toml: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            document(extra="[timers]\nrond_ms = 100\n"),
            "timers.rond_ms: unknown key (allowed: round_ms, ack_ms, hop_retries, "
            "token_loss_ms, sos_reply_ms, join_ms, boot_ms, beacon_ms)",
            id="unknown-timer",
        ),
        pytest.param(
            document(cluster=CLUSTER + "colour = 1\n"),
            "cluster.colour: unknown key (allowed: name, id, key_file, profile, quorum, "
            "upstream, exclusion, vip_lease_s, ring_group, answer_lease_ms)",
            id="unknown-cluster-key",
        ),
        pytest.param(
            "verbose = true\n" + document(),
            "verbose: unknown key (allowed: cluster, timers, rebalance, health, nodes, vips, "
            "sync, services, metrics)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            document(nodes=THREE_NODES + "weight = 3\n"),
            "nodes[2].weight: unknown key (allowed: id, address, front_interface, back_interface)",
            id="unknown-node-key",
        ),
        pytest.param(
            document(vips=TWO_VIPS + "port = 80\n"),
            "vips[1].port: unknown key (allowed: address, home)",
            id="unknown-vip-key",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = "42"\n'),
            "cluster.id: must be a valid integer, got '42' (string)",
            id="id-as-string",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = 42.0\n'),
            "cluster.id: must be a valid integer, got 42.0 (float)",
            id="id-as-float",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = true\n'),
            "cluster.id: must be a valid integer, got True (boolean)",
            id="id-as-boolean",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = 0\n'),
            "cluster.id: must be greater than or equal to 1, got 0 (integer)",
            id="id-zero",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = 4294967296\n'),
            "cluster.id: must be less than or equal to 4294967295, got 4294967296 (integer)",
            id="id-too-large",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "Edge_A"\nid = 42\n'),
            "cluster.name: 'Edge_A' must be 1 to 63 characters of a-z, 0-9 and '-'",
            id="bad-name",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = ""\nid = 42\n'),
            "cluster.name: '' must be 1 to 63 characters of a-z, 0-9 and '-'",
            id="empty-name",
        ),
        pytest.param(
            document(cluster=f'[cluster]\nname = "{"a" * 64}"\nid = 42\n'),
            f"cluster.name: '{'a' * 64}' must be 1 to 63 characters of a-z, 0-9 and '-'",
            id="long-name",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'profile = "slow"\n'),
            "cluster.profile: must be 'lan' or 'fast', got 'slow' (string)",
            id="bad-profile",
        ),
        pytest.param(
            document(cluster=CLUSTER + 'key_file = ""\n'),
            "cluster.key_file: string should have at least 1 character, got '' (string)",
            id="empty-key-file",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\n'),
            "cluster.id: required key is missing",
            id="missing-id",
        ),
        pytest.param(
            THREE_NODES,
            "cluster: required key is missing",
            id="missing-cluster",
        ),
        pytest.param(
            document(nodes='[[nodes]]\naddress = "198.18.0.2:7400"\n'),
            "nodes[0].id: required key is missing",
            id="missing-node-id",
        ),
        pytest.param(
            document(extra="[rebalance]\nenabled = 1\n"),
            "rebalance.enabled: must be a valid boolean, got 1 (integer)",
            id="enabled-as-integer",
        ),
        pytest.param(
            document(extra="[rebalance]\nmargin_permille = 0\n"),
            "rebalance.margin_permille: must be greater than or equal to 1, got 0 (integer)",
            id="zero-margin",
        ),
        pytest.param(
            document(extra="[rebalance]\nsettle_ms = 0\n"),
            "rebalance.settle_ms: must be greater than 0, got 0 (integer)",
            id="zero-settle",
        ),
        pytest.param(
            document(extra='[rebalance]\npreempt = "yes"\n'),
            "rebalance.preempt: must be a valid boolean, got 'yes' (string)",
            id="preempt-as-string",
        ),
        pytest.param(
            document(extra="[timers]\nack_ms = -5\n"),
            "timers.ack_ms: must be greater than 0, got -5 (integer)",
            id="negative-timer",
        ),
        pytest.param(
            document(extra="[timers]\nhop_retries = 11\n"),
            "timers.hop_retries: must be less than or equal to 10, got 11 (integer)",
            id="too-many-retries",
        ),
        pytest.param(
            "timers = 5\n" + document(),
            "timers: must be a table, got 5 (integer)",
            id="timers-not-a-table",
        ),
        pytest.param(
            document(nodes='[nodes]\nid = 1\naddress = "198.18.0.2:7400"\n'),
            "nodes: must be an array, got a table",
            id="nodes-as-table",
        ),
        pytest.param(
            document(nodes="nodes = [1]\n", vips=""),
            "cluster.nodes: unknown key (allowed: name, id, key_file, profile, quorum, "
            "upstream, exclusion, vip_lease_s, ring_group, answer_lease_ms)",
            id="array-under-cluster-table",
        ),
        pytest.param(
            "nodes = [1, 2]\n" + CLUSTER,
            "nodes[0]: must be a table, got 1 (integer) (and 1 more error)",
            id="node-not-a-table",
        ),
        pytest.param(
            document(cluster='[cluster]\nname = "edge-a"\nid = "x"\nprofile = 1\n'),
            "cluster.id: must be a valid integer, got 'x' (string) (and 1 more error)",
            id="two-field-errors",
        ),
        pytest.param(
            document(extra="[timers]\nround_ms = 1979-05-27\n"),
            "timers.round_ms: must be a valid integer, got datetime.date(1979, 5, 27) (date/time)",
            id="date-as-timer",
        ),
    ],
)
def test_field_errors(text: str, expected: str) -> None:
    assert error_of(text) == f"cluster.toml: {expected}"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("198.18.0.x:7400", "'198.18.0.x:7400' is not host:port with an IP address "),
        ("198.18.0.2", "'198.18.0.2' is not host:port with an IP address "),
        ("node1:7400", "'node1:7400' is not host:port with an IP address "),
        ("2001:db8::2:7400", "'2001:db8::2:7400' is not host:port with an IP address "),
        ("[198.18.0.2]:7400", "'[198.18.0.2]:7400' is not host:port with an IP address "),
        ("198.18.0.02:7400", "'198.18.0.02:7400' is not host:port with an IP address "),
        ("198.18.0.2:0", "'198.18.0.2:0': port 0 is not in 1..65535"),
        ("198.18.0.2:65536", "'198.18.0.2:65536': port 65536 is not in 1..65535"),
        ("0.0.0.0:7400", "'0.0.0.0:7400': 0.0.0.0 is an unspecified or multicast address"),
        ("[ff02::1]:7400", "'[ff02::1]:7400': ff02::1 is an unspecified or multicast address"),
    ],
)
def test_bad_node_addresses(address: str, expected: str) -> None:
    text = document(nodes=nodes_toml((1, "198.18.0.2:7400"), (2, address)), vips="")
    message = error_of(text)
    assert message.startswith(f"cluster.toml: nodes[1].address: {expected}")


def test_bad_node_address_message_matches_the_documented_form() -> None:
    text = document(nodes=THREE_NODES.replace("198.18.0.4:7400", "198.18.0.x:7400"))
    assert error_of(text) == (
        "cluster.toml: nodes[2].address: '198.18.0.x:7400' is not host:port with an IP "
        "address (e.g. 198.18.0.2:7400)"
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("198.18.0.100/32", "'198.18.0.100/32' is not an IPv4 or IPv6 address (e.g. 198.18.0.100)"),
        ("vip.example", "'vip.example' is not an IPv4 or IPv6 address (e.g. 198.18.0.100)"),
        ("::", "'::' is an unspecified or multicast address"),
        ("224.0.0.18", "'224.0.0.18' is an unspecified or multicast address"),
    ],
)
def test_bad_vip_addresses(address: str, expected: str) -> None:
    assert error_of(document(vips=vips_toml((address, None)))) == (
        f"cluster.toml: vips[0].address: {expected}"
    )


# ---- TOML syntax and unreadable files --------------------------------------------------


def test_toml_syntax_error_names_line_and_column() -> None:
    text = '[cluster]\nname = "edge-a"\nid = \n'
    assert error_of(text) == "cluster.toml: line 3 column 6: Invalid value"


def test_toml_syntax_error_at_end_of_document() -> None:
    text = '[cluster]\nname = "edge-a'
    message = error_of(text)
    assert message.startswith("cluster.toml: line 2 column ")
    assert "Unterminated string" in message


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    message = error_of(CLUSTER + "id = 43\n")
    assert message.startswith("cluster.toml: line 4 column ")


def test_load_config_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(document(), encoding="utf-8")
    assert load_config(path) == parse_config(document(), "elsewhere")


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(document(vips=vips_toml(("198.18.0.100", 9))), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^.*cluster\.toml: vips\[0\]\.home: node 9 "):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"
    assert isinstance(caught.value, RainctlError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b"[cluster]\nname = \xff\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 17\)"):
        load_config(path)


def test_config_error_is_always_one_line() -> None:
    assert str(ConfigError("a\nb\r\n  c")) == "a b c"


def test_model_accepts_python_values_too() -> None:
    config = ClusterConfig.model_validate(
        {
            "cluster": {"name": "edge-a", "id": 42, "profile": TimerProfile.FAST},
            "nodes": [{"id": 1, "address": "198.18.0.2:7400"}],
        }
    )
    assert config.cluster.profile is TimerProfile.FAST


@pytest.mark.parametrize(
    ("cluster", "timers", "expected_ms"),
    [
        ('profile = "fast"\n', "", 30),
        ('profile = "lan"\n', "", 45),
        ('profile = "lan"\n', "[timers]\nack_ms = 40\n", 60),
        ('profile = "lan"\nanswer_lease_ms = 20\n', "", 20),
        ('profile = "lan"\nanswer_lease_ms = 0\n', "", 0),
        # Very short hops: never below 10 ms (renewed twice per lease).
        ('profile = "fast"\n', "[timers]\nack_ms = 6\n", 10),
    ],
)
def test_the_answer_lease_is_half_a_hop_failure_unless_set(
    cluster: str, timers: str, expected_ms: int
) -> None:
    config = parse_config(document(cluster=CLUSTER + cluster, extra=timers), "cluster.toml")
    assert answer_lease_ms(config, config.ring_timers()) == expected_ms


def test_hops_too_short_for_the_derived_answer_lease_are_refused_with_the_way_out() -> None:
    text = document(cluster=CLUSTER + 'profile = "fast"\n', extra="[timers]\nack_ms = 3\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "cluster.toml")
    assert str(caught.value) == (
        "cluster.toml: timers.ack_ms: ack_ms x hop_retries (3 x 3 = 9 ms) leaves no room for "
        "the answer lease (from 10 ms to below the hop failure time): lengthen the timers or "
        "set cluster.answer_lease_ms = 0"
    )
    off = parse_config(
        text.replace('profile = "fast"\n', 'profile = "fast"\nanswer_lease_ms = 0\n'),
        "cluster.toml",
    )
    assert answer_lease_ms(off, off.ring_timers()) == 0
