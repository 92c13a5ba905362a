"""keepalived.conf -> rainctl cluster config (`rainctl import keepalived`).

One keepalived.conf describes one front node; the importer takes one file per node (node ids
1, 2, ... in the order given) and writes one cluster config for all of them:

- VRRP: every address of `virtual_ipaddress` / `virtual_ipaddress_excluded` becomes a
  `[[vips]]` entry. A VIP's `home` is the node whose file gives its instance the highest
  `priority` (keepalived's master when every node runs); with one file, or a tie, the
  VIP has no home and rainctl spreads it. `nopreempt` on every instance turns
  `[rebalance] preempt` off, `preempt_delay` becomes `settle_ms`. A node's instances'
  `interface` is its `front_interface`.
- LVS: every `virtual_server ADDRESS PORT` becomes a `[[services]]` entry (lb_algo /
  lvs_sched, lb_kind / lvs_method, persistence_timeout, protocol, mh-port, sorry_server),
  every `real_server` one of its real servers (weight, lvs_method), and the first checker of
  each real server that rainctl can run (TCP_CHECK, HTTP_GET, SSL_GET, MISC_CHECK) its health
  check, with keepalived's inheritance (virtual server -> real server -> checker) of
  delay_loop, connect_timeout, retry, virtualhost and inhibit_on_failure. A real server with
  no checker is always up in keepalived: kind = "none". When every real server of a service
  has the same check it is written once as `[services.health]`.
- `lvs_sync_daemon` turns `[sync]` on.

Every statement is either mapped or listed as unmapped with its file:line and the reason
(`Unmapped`); mappings that change a value are listed as notes. What no file tells (the
ring's node addresses, the cluster key file) is written as a `<FILL IN ...>` placeholder
that `rainctl config check` rejects. The config is validated with rainctl's own models
(placeholders replaced by stand-ins) before the TOML is rendered from the validated values
(templates/keepalived_import.toml.j2), so once the placeholders are filled in it loads.

A file keepalived would reject (syntax, an unknown top-level keyword, an address or number
that is not one, an include that cannot be read) is a `MigrationError` naming FILE:LINE.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rainctl.config.diagnostics import format_validation_error
from rainctl.config.health import INTERVAL_MS_DEFAULT, CheckOverrides
from rainctl.config.models import ClusterConfig
from rainctl.errors import MigrationError
from rainctl.migrate.keepalived_parse import Origin, Statement, parse_file
from rainctl.templating import render

TEMPLATE = "keepalived_import.toml.j2"
PLACEHOLDER_PREFIX = "<FILL IN"
RING_PORT_SUGGESTED = 7400
PRIORITY_DEFAULT = 100
"""keepalived's priority of an instance that sets none."""
PERSISTENCE_S_DEFAULT = 360
"""keepalived's persistence_timeout without a value (6 minutes)."""

_TOP_LEVEL_KEYWORDS = frozenset(
    {
        "global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "vrrp_track_process",
        "track_file", "vrrp_track_file", "track_group", "virtual_server",
        "virtual_server_group", "static_ipaddress", "static_routes", "static_rules",
        "linkbeat_interfaces", "garp_group", "bfd_instance", "SSL", "net_namespace",
        "net_namespace_ipvs", "namespace_with_ipsets", "instance", "use_pid_dir",
        "linkbeat_use_polling", "child_wait_time",
    }
)  # fmt: skip
"""keepalived.conf's top-level keywords (keepalived.conf(5), 2.2); any other is an error,
as keepalived reports it."""

_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"}
)
_FORWARDING = {"NAT": "nat", "DR": "dr", "TUN": "tunnel"}
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_CHECKERS = {"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https", "MISC_CHECK": "script"}
_UNSUPPORTED_CHECKERS = frozenset(
    {"SMTP_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK", "BFD_CHECK", "FILE_CHECK"}
)
_SYNC_OPTIONS = frozenset({"inst", "id", "maxlen", "port", "ttl", "group"})
_CHECK_SETTINGS = frozenset(
    {"delay_loop", "connect_timeout", "retry", "nb_get_retry", "virtualhost"}
)
"""Checker settings a virtual server or real server sets for its checkers (inherited)."""
_RETRY_ALIASES = {"nb_get_retry": "retry"}
"""keepalived 1.x's name of HTTP_GET's retry, still read by 2.x."""

_MAIL = "rainctl sends no mail: its log and `rainctl status` show every change"
_NOTIFY = "rainctl runs no notify scripts: its log and `rainctl status` show every change"
_TRACK = (
    "rainctl does not weigh a node's claim by tracked interfaces or scripts: a node that "
    "fails leaves the ring, and `rainctl node drain` moves VIPs away on purpose"
)
_GARP = "rainctl sends its own gratuitous ARP / unsolicited NA on takeover (operations.md 3)"
_VRRP_REASONS = {
    "state": "the ring picks owners; homes come from the files' priorities",
    "virtual_router_id": "rainctl has no VRRP router ids: [cluster] id tells clusters apart",
    "advert_int": "failure detection is the ring's ([cluster] profile, [timers])",
    "authentication": "the ring is authenticated with the cluster key ([cluster] key_file)",
    "unicast_src_ip": "the ring runs between [[nodes]] addresses (see the node's placeholder)",
    "unicast_peer": "the ring runs between [[nodes]] addresses (see the nodes' placeholders)",
    "virtual_routes": "rainctl moves VIP addresses only, no routes",
    "virtual_rules": "rainctl moves VIP addresses only, no rules",
    "use_vmac": "rainctl keeps the node's own MAC address and announces the move",
    "vmac_xmit_base": "rainctl keeps the node's own MAC address and announces the move",
    "smtp_alert": _MAIL,
    "version": "rainctl speaks its own ring protocol, not VRRP",
}
_GLOBAL_REASONS = {
    "router_id": "nodes are identified by their [[nodes]] id",
    "script_user": "rainctl runs script checks as the daemon's user",
    "enable_script_security": "rainctl runs script checks as the daemon's user",
    "lvs_timeouts": "rainctl leaves the IPVS connection timeouts as they are",
    "lvs_flush": "rainctl owns the node's IPVS table and removes services not configured",
}
_SERVICE_REASONS = {
    "quorum": "rainctl has no service quorum: a sorry_server takes over when none is up",
    "hysteresis": "rainctl has no service quorum: a sorry_server takes over when none is up",
    "quorum_up": _NOTIFY,
    "quorum_down": _NOTIFY,
    "ha_suspend": "rainctl checks real servers on every node alike, owner of the VIP or not",
    "alpha": "a real server's state comes from rainctl's rise / fall counts, never assumed",
    "omega": _NOTIFY,
    "delay_before_retry": "rainctl probes again after an eighth of interval_ms after a failure",
    "warmup": "rainctl spreads the first probes itself",
    "persistence_granularity": "rainctl's persistence is per client address",
    "persistence_engine": "rainctl sets no IPVS persistence engine",
    "sorry_server_inhibit": "a sorry server is added while no real server is up, never weighed",
    "sorry_server_lvs_method": "the sorry server uses the first real server's forwarding",
    "ops": "rainctl sets no one-packet scheduling",
    "sh-port": "rainctl sets no sh flags (mh-port is mapped)",
    "flag-1": "rainctl sets scheduler flags itself (the fallback flag of sh and mh)",
    "flag-2": "rainctl sets scheduler flags itself (mh-port is mapped)",
    "flag-3": "rainctl sets no third scheduler flag",
    "smtp_alert": _MAIL,
    "snmp_name": "rainctl has no SNMP agent",
    "ip_family": "only used by fwmark services, which rainctl does not configure",
}
_REAL_SERVER_REASONS = {
    "notify_up": _NOTIFY,
    "notify_down": _NOTIFY,
    "uthreshold": "rainctl sets no IPVS connection thresholds",
    "lthreshold": "rainctl sets no IPVS connection thresholds",
    "smtp_alert": _MAIL,
    "snmp_name": "rainctl has no SNMP agent",
    "alpha": _SERVICE_REASONS["alpha"],
    "delay_before_retry": _SERVICE_REASONS["delay_before_retry"],
    "warmup": _SERVICE_REASONS["warmup"],
}
_CHECKER_REASONS = {
    "connect_ip": "rainctl probes the real server's own address",
    "bindto": "rainctl's probes leave from the node's own address",
    "bind_if": "rainctl's probes leave from the node's own address",
    "bind_port": "rainctl's probes use an ephemeral source port",
    "fwmark": "rainctl's probes are not marked",
    "log_all_failures": "rainctl logs every state change of a real server",
    "alpha": _SERVICE_REASONS["alpha"],
    "delay_before_retry": _SERVICE_REASONS["delay_before_retry"],
    "warmup": _SERVICE_REASONS["warmup"],
    "http_protocol": "rainctl's http checks speak HTTP/1.1",
    "fast_recovery": "rainctl checks one URL per real server",
    "enable_sni": "rainctl's https checks always send the Host as SNI",
    "misc_dynamic": "rainctl's script checks pass or fail; weights come from agent checks",
    "user": "rainctl runs script checks as the daemon's user",
    "digest": "rainctl checks the status and body_regex, not a digest of the body",
    "regex_no_match": "rainctl's body_regex must match (no inverted match)",
    "regex_options": "body_regex is a Python regular expression without PCRE options",
    "regex_stack": "body_regex is a Python regular expression without PCRE options",
    "regex_min_offset": "body_regex searches the first 64 KiB of the body",
    "regex_max_offset": "body_regex searches the first 64 KiB of the body",
}
_TOP_LEVEL_REASONS = {
    "vrrp_sync_group": (
        "rainctl moves each VIP on its own: VIPs with the same highest-priority node share a "
        "home, or pin them together with `rainctl vip pin`"
    ),
    "vrrp_script": _TRACK,
    "vrrp_track_process": _TRACK,
    "track_file": _TRACK,
    "vrrp_track_file": _TRACK,
    "track_group": _TRACK,
    "static_ipaddress": "addresses that are not VIPs belong to the node's network config",
    "static_routes": "routes belong to the node's network configuration",
    "static_rules": "rules belong to the node's network configuration",
    "garp_group": _GARP,
    "bfd_instance": "rainctl detects node failures with the ring, not BFD",
    "SSL": "rainctl's https checks present no client certificate",
    "virtual_server_group": (
        "not read by the importer: write one virtual_server per address (or expand it)"
    ),
}


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A keepalived statement that has no rainctl equivalent, and why."""

    origin: Origin
    directive: str
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """A mapping that changed, chose or added something the operator should know."""

    origin: Origin | None
    message: str


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A value no file tells, written as `<FILL IN ...>` at `key`."""

    key: str
    text: str


@dataclass(frozen=True, slots=True)
class ImportResult:
    config: ClusterConfig
    """The validated config, placeholders replaced by stand-ins."""
    text: str
    """The annotated TOML file, placeholders in place."""
    sources: tuple[str, ...]
    """Every file read, main files and includes, in order."""
    placeholders: tuple[Placeholder, ...]
    notes: tuple[Note, ...]
    unmapped: tuple[Unmapped, ...]


def import_keepalived(paths: Sequence[Path]) -> ImportResult:
    """The rainctl config of the cluster whose nodes' keepalived.conf files are `paths`
    (node 1 first)."""
    if not paths:
        raise MigrationError("at least one keepalived.conf is needed")
    importer = _Importer()
    for index, path in enumerate(paths):
        importer.read_node(index + 1, path)
    return importer.finish()


@dataclass
class _Node:
    node_id: int
    source: str | None
    """None: a node known from a unicast_peer only (or the assumed second node)."""
    interfaces: Counter[str] = field(default_factory=Counter)
    sync_interface: str | None = None
    unicast_source: str | None = None
    unicast_peers: list[str] = field(default_factory=list)


@dataclass
class _Vip:
    address: str
    origin: Origin
    priorities: dict[int, int] = field(default_factory=dict)


@dataclass
class _Service:
    document: dict[str, Any]
    origin: Origin
    real_server_origins: list[Origin]


@dataclass
class _CheckContext:
    """Settings inherited by a real server's checkers (virtual server, then real server)."""

    settings: dict[str, Statement] = field(default_factory=dict)
    inhibit: bool = False

    def layered(self, statements: Iterable[Statement]) -> _CheckContext:
        settings = dict(self.settings)
        inhibit = self.inhibit
        for statement in statements:
            if statement.keyword in _CHECK_SETTINGS:
                settings[_RETRY_ALIASES.get(statement.keyword, statement.keyword)] = statement
            elif statement.keyword == "inhibit_on_failure":
                inhibit = _boolean(statement)
        return _CheckContext(settings, inhibit)


class _Importer:
    def __init__(self) -> None:
        self.nodes: list[_Node] = []
        self.vips: dict[str, _Vip] = {}
        self.services: dict[tuple[str, int, str], _Service] = {}
        self.sources: list[str] = []
        self.notes: list[Note] = []
        self.unmapped: list[Unmapped] = []
        self.nopreempt: list[bool] = []
        self.preempt_delays_s: list[float] = []
        self.sync_ids: list[int] = []

    # ---- reading -------------------------------------------------------------------------

    def read_node(self, node_id: int, path: Path) -> None:
        parsed = parse_file(path)
        self.sources.extend(parsed.files)
        for empty in parsed.empty_includes:
            self.notes.append(Note(empty.origin, f"include {empty.pattern}: no file matches"))
        node = _Node(node_id, str(path))
        self.nodes.append(node)
        for statement in parsed.statements:
            self._top_level(node, statement)

    def _top_level(self, node: _Node, statement: Statement) -> None:
        keyword = statement.keyword
        if keyword not in _TOP_LEVEL_KEYWORDS:
            raise MigrationError(f"{statement.origin}: unknown keyword {keyword!r}")
        if keyword == "global_defs":
            self._global_defs(node, _block(statement))
        elif keyword == "vrrp_instance":
            self._vrrp_instance(node, statement)
        elif keyword == "virtual_server":
            self._virtual_server(statement)
        else:
            self._unmap(statement, _TOP_LEVEL_REASONS.get(keyword, "no rainctl equivalent"))

    def _unmap(self, statement: Statement, reason: str) -> None:
        text = statement.text() + (" { ... }" if statement.is_block else "")
        self.unmapped.append(Unmapped(statement.origin, text, reason))

    def _global_defs(self, node: _Node, statements: tuple[Statement, ...]) -> None:
        for statement in statements:
            keyword = statement.keyword
            if keyword == "lvs_sync_daemon":
                self._sync_daemon(node, statement)
            elif keyword.startswith(("notification_email", "smtp_")):
                self._unmap(statement, _MAIL)
            elif keyword.startswith(("vrrp_garp", "vrrp_gna")):
                self._unmap(statement, _GARP)
            else:
                self._unmap(
                    statement,
                    _GLOBAL_REASONS.get(keyword, "global keepalived setting, no equivalent"),
                )

    def _sync_daemon(self, node: _Node, statement: Statement) -> None:
        arguments = list(statement.arguments)
        if not arguments:
            raise MigrationError(f"{statement.origin}: lvs_sync_daemon needs an interface")
        node.sync_interface = arguments.pop(0)
        if arguments and arguments[0] not in _SYNC_OPTIONS:
            arguments.pop(0)  # the VRRP instance whose master syncs: rainctl syncs every node
        options = _options(arguments)
        if "id" in options:
            self.sync_ids.append(_integer(options.pop("id"), statement, 0, 255))
        options.pop("inst", None)
        if options:
            extra = " ".join(f"{key} {value}" for key, value in options.items())
            self.unmapped.append(
                Unmapped(
                    statement.origin,
                    f"lvs_sync_daemon ... {extra}",
                    "rainctl's sync daemons use the kernel's defaults (multicast 224.0.0.81)",
                )
            )

    def _vrrp_instance(self, node: _Node, instance: Statement) -> None:
        statements = _block(instance)
        interface = next((_arity(s, 1)[0] for s in statements if s.keyword == "interface"), None)
        if interface is not None:
            node.interfaces[interface] += 1
        priority = PRIORITY_DEFAULT
        nopreempt = False
        for statement in statements:
            keyword = statement.keyword
            if keyword == "interface":
                _arity(statement, 1)
            elif keyword == "priority":
                priority = _integer(_arity(statement, 1)[0], statement, 1, 255)
            elif keyword == "nopreempt":
                nopreempt = True
            elif keyword == "preempt":
                nopreempt = False
            elif keyword == "preempt_delay":
                self.preempt_delays_s.append(_seconds(_arity(statement, 1)[0], statement))
            elif keyword in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
                continue  # read below, once the priority is known
            elif keyword == "unicast_src_ip":
                node.unicast_source = _address(_arity(statement, 1)[0], statement)
                self._unmap(statement, _VRRP_REASONS[keyword])
            elif keyword == "unicast_peer":
                for peer in _block(statement):
                    address = _address(peer.keyword, peer)
                    if address not in node.unicast_peers:
                        node.unicast_peers.append(address)
                self._unmap(statement, _VRRP_REASONS[keyword])
            elif keyword.startswith("track_"):
                self._unmap(statement, _TRACK)
            elif keyword.startswith("notify"):
                self._unmap(statement, _NOTIFY)
            elif keyword.startswith("garp_") or keyword.startswith("lower_prio_no_advert"):
                self._unmap(statement, _GARP)
            else:
                self._unmap(statement, _VRRP_REASONS.get(keyword, "no rainctl equivalent"))
        self.nopreempt.append(nopreempt)
        for statement in statements:
            if statement.keyword in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
                for entry in _block(statement):
                    self._vip(node, entry, interface, priority)

    def _vip(self, node: _Node, entry: Statement, interface: str | None, priority: int) -> None:
        address_text, _, prefix = entry.keyword.partition("/")
        address = _address(address_text, entry)
        length = ipaddress.ip_address(address).max_prefixlen
        if prefix and prefix != str(length):
            self.notes.append(
                Note(
                    entry.origin,
                    f"{entry.keyword}: rainctl adds VIPs as host addresses (/{length}); the "
                    "node's own address gives the subnet route",
                )
            )
        options = _options(list(entry.arguments))
        device = options.pop("dev", None)
        if device is not None and device != interface:
            node.interfaces[device] += 1
        if options:
            self.unmapped.append(
                Unmapped(
                    entry.origin,
                    entry.text(),
                    "rainctl adds VIPs as plain host addresses (no label, scope, broadcast, ...)",
                )
            )
        vip = self.vips.get(address)
        if vip is None:
            vip = self.vips[address] = _Vip(address, entry.origin)
        elif node.node_id in vip.priorities:
            self.notes.append(
                Note(entry.origin, f"{address} is already a VIP at {vip.origin}: one entry")
            )
        vip.priorities[node.node_id] = max(priority, vip.priorities.get(node.node_id, 0))

    # ---- LVS ----------------------------------------------------------------------------

    def _virtual_server(self, server: Statement) -> None:
        arguments = server.arguments
        if arguments[:1] == ("fwmark",):
            self._unmap(
                server,
                "rainctl configures services by address and port, not firewall marks: write "
                "one virtual_server per address and port",
            )
            return
        if arguments[:1] == ("group",):
            self._unmap(server, _TOP_LEVEL_REASONS["virtual_server_group"])
            return
        if len(arguments) not in (1, 2):
            raise MigrationError(
                f"{server.origin}: virtual_server takes an address and a port, 'fwmark N' or "
                f"'group NAME' (got {' '.join(arguments) or 'nothing'})"
            )
        vip = _address(arguments[0], server)
        port = _integer(arguments[1], server, 0, 65535) if len(arguments) == 2 else 0
        if port == 0:
            self._unmap(server, "a port-less (persistent) service: rainctl needs a port")
            return
        statements = _block(server)
        document: dict[str, Any] = {"vip": vip, "port": port}
        self._service_settings(server, statements, document)
        context = _CheckContext().layered(statements)
        real_servers: list[dict[str, Any]] = []
        origins: list[Origin] = []
        for statement in statements:
            if statement.keyword == "real_server":
                entry = self._real_server(statement, document, context)
                if entry is not None:
                    real_servers.append(entry)
                    origins.append(statement.origin)
        _factor_health(document, real_servers)
        document["real_servers"] = real_servers
        self._add_service(_Service(document, server.origin, origins))

    def _service_settings(
        self, server: Statement, statements: tuple[Statement, ...], document: dict[str, Any]
    ) -> None:
        """The virtual server's own statements (not its real servers) into `document`."""
        protocol: str | None = None
        for statement in statements:
            keyword = statement.keyword
            if keyword in ("lb_algo", "lvs_sched"):
                scheduler = _arity(statement, 1)[0]
                if scheduler in _SCHEDULERS:
                    document["scheduler"] = scheduler
                else:
                    self._unmap(statement, "not a scheduler rainctl configures (wlc is used)")
            elif keyword in ("lb_kind", "lvs_method"):
                document["forwarding"] = self._forwarding(statement)
            elif keyword == "protocol":
                name = _arity(statement, 1)[0].upper()
                if name not in _PROTOCOLS:
                    raise MigrationError(f"{statement.origin}: protocol {name!r}: not TCP|UDP|SCTP")
                protocol = _PROTOCOLS[name]
            elif keyword == "persistence_timeout":
                timeout = statement.arguments
                document["persistence_s"] = (
                    _integer(timeout[0], statement, 1, 2**31 - 1)
                    if timeout
                    else PERSISTENCE_S_DEFAULT
                )
            elif keyword == "mh-port":
                document["mh_port"] = True
            elif keyword in ("mh-fallback", "sh-fallback"):
                continue  # rainctl always sets the fallback flag of mh and sh
            elif keyword == "sorry_server":
                self._sorry_server(document, statement, document["port"])
            elif keyword in (*_CHECK_SETTINGS, "inhibit_on_failure", "real_server"):
                continue  # read with the real servers
            else:
                self._unmap(statement, _SERVICE_REASONS.get(keyword, "no rainctl equivalent"))
        if protocol is None:
            # keepalived.conf(5): without `protocol` the kernel's default, UDP, is used.
            self.notes.append(
                Note(server.origin, "no protocol: keepalived uses UDP (it warns), so does this")
            )
            protocol = "udp"
        document["protocol"] = protocol
        document.setdefault("forwarding", "nat")  # keepalived's default lvs_method
        if document.get("mh_port") and document.get("scheduler") != "mh":
            self.notes.append(Note(server.origin, "mh-port without lvs_sched mh: not used"))
            del document["mh_port"]

    def _forwarding(self, statement: Statement) -> str:
        method, *options = _at_least(statement, 1)
        if method.upper() not in _FORWARDING:
            raise MigrationError(
                f"{statement.origin}: {statement.keyword} {method!r}: not NAT|DR|TUN"
            )
        if options:
            self._unmap(statement, "rainctl's tunnel forwarding is IPIP without options")
        return _FORWARDING[method.upper()]

    def _sorry_server(self, document: dict[str, Any], statement: Statement, port: int) -> None:
        address, *rest = _at_least(statement, 1)
        document["sorry_server"] = _address(address, statement)
        if rest and _integer(rest[0], statement, 0, 65535) != port:
            self.notes.append(
                Note(statement.origin, f"sorry_server port {rest[0]}: rainctl uses port {port}")
            )

    def _real_server(
        self, server: Statement, service: dict[str, Any], inherited: _CheckContext
    ) -> dict[str, Any] | None:
        arguments = _at_least(server, 1)
        address = _address(arguments[0], server)
        if ipaddress.ip_address(address).version != ipaddress.ip_address(service["vip"]).version:
            self._unmap(server, "rainctl needs real servers of the VIP's address family")
            return None
        port = _integer(arguments[1], server, 1, 65535) if len(arguments) > 1 else service["port"]
        entry: dict[str, Any] = {"address": address}
        statements = _block(server)
        for statement in statements:
            keyword = statement.keyword
            if keyword == "weight":
                entry["weight"] = _integer(_arity(statement, 1)[0], statement, 0, 65535)
            elif keyword in ("lb_kind", "lvs_method"):
                entry["forwarding"] = self._forwarding(statement)
            elif keyword in (*_CHECK_SETTINGS, "inhibit_on_failure"):
                continue  # read by the checker
            elif keyword in _CHECKERS or keyword in _UNSUPPORTED_CHECKERS:
                continue  # read below
            else:
                self._unmap(statement, _REAL_SERVER_REASONS.get(keyword, "no rainctl equivalent"))
        forwarding = entry.get("forwarding", service["forwarding"])
        if port != service["port"]:
            if forwarding == "nat":
                entry["port"] = port
            else:
                self.notes.append(
                    Note(
                        server.origin,
                        f"port {port} with {forwarding}: IPVS delivers to the service port "
                        f"{service['port']}, written so",
                    )
                )
        entry["health"] = self._check(server, statements, inherited.layered(statements))
        return entry

    def _check(
        self, server: Statement, statements: tuple[Statement, ...], context: _CheckContext
    ) -> dict[str, Any]:
        checkers = [
            s for s in statements if s.keyword in _CHECKERS or s.keyword in _UNSUPPORTED_CHECKERS
        ]
        chosen = next((s for s in checkers if s.keyword in _CHECKERS), None)
        for checker in checkers:
            if checker is chosen:
                continue
            if checker.keyword in _UNSUPPORTED_CHECKERS:
                reason = "rainctl has no such check (kinds: tcp, http, https, script, agent)"
            else:
                reason = "rainctl runs one check per real server (the first one is mapped)"
            self._unmap(checker, reason)
        if chosen is None:
            if checkers:
                self.notes.append(
                    Note(server.origin, 'no checker rainctl can run: kind = "none" (always up)')
                )
            return {"kind": "none"}
        checker_statements = _block(chosen)
        layered = context.layered(checker_statements)
        kind = _CHECKERS[chosen.keyword]
        check: dict[str, Any] = {"kind": kind}
        self._timers(check, layered, kind)
        check["on_failure"] = "quiesce" if layered.inhibit else "remove"
        urls: list[Statement] = []
        for statement in checker_statements:
            keyword = statement.keyword
            if keyword == "connect_port" and kind != "script":
                check["port"] = _integer(_arity(statement, 1)[0], statement, 1, 65535)
            elif keyword in (*_CHECK_SETTINGS, "inhibit_on_failure"):
                continue
            elif keyword == "url" and kind in ("http", "https"):
                urls.append(statement)
            elif keyword == "misc_path" and kind == "script":
                check["command"] = self._command(statement)
            elif keyword == "misc_timeout" and kind == "script":
                check["script_timeout_ms"] = min(
                    max(_integer(_arity(statement, 1)[0], statement, 1, 600) * 1000, 10), 600_000
                )
            else:
                self._unmap(statement, _CHECKER_REASONS.get(keyword, "no rainctl equivalent"))
        if kind in ("http", "https"):
            self._http(check, urls, chosen)
        if kind == "script" and "command" not in check:
            raise MigrationError(f"{chosen.origin}: MISC_CHECK needs misc_path")
        if "retry" not in layered.settings and kind == "script":
            check["fall"] = 1  # MISC_CHECK's default retry is 0: the first failure counts
        return check

    def _timers(self, check: dict[str, Any], context: _CheckContext, kind: str) -> None:
        settings = context.settings
        if "delay_loop" in settings:
            statement = settings["delay_loop"]
            check["interval_ms"] = _clamped_ms(statement, 50, 3_600_000, self.notes)
        if "connect_timeout" in settings and kind != "script":
            statement = settings["connect_timeout"]
            timeout_ms = _clamped_ms(statement, 10, 600_000, self.notes)
            interval_ms = check.get("interval_ms", INTERVAL_MS_DEFAULT)
            if timeout_ms >= interval_ms:
                self.notes.append(
                    Note(
                        statement.origin,
                        f"connect_timeout {statement.arguments[0]} s is not below the interval "
                        f"({interval_ms} ms): timeout_ms = {interval_ms - 1}",
                    )
                )
                timeout_ms = interval_ms - 1
            check["timeout_ms"] = timeout_ms
        if "retry" in settings:
            statement = settings["retry"]
            check["fall"] = min(_integer(_arity(statement, 1)[0], statement, 0, 1000) + 1, 100)
        if "virtualhost" in settings and kind in ("http", "https"):
            host = _arity(settings["virtualhost"], 1)[0]
            check["host"] = host

    def _http(self, check: dict[str, Any], urls: list[Statement], checker: Statement) -> None:
        if not urls:
            raise MigrationError(f"{checker.origin}: {checker.keyword} needs a url block")
        for extra in urls[1:]:
            self._unmap(extra, "rainctl checks one path per real server (the first is mapped)")
        url = _block(urls[0])
        inverted = any(s.keyword == "regex_no_match" for s in url)
        for statement in url:
            keyword = statement.keyword
            if keyword == "path":
                check["path"] = _arity(statement, 1)[0]
            elif keyword == "status_code":
                check["expect_status"] = _status_codes(statement)
            elif keyword == "virtualhost":
                check["host"] = _arity(statement, 1)[0]
            elif keyword == "regex" and not inverted:
                pattern = _arity(statement, 1)[0]
                if _compiles(pattern):
                    check["body_regex"] = pattern
                else:
                    self._unmap(statement, "not a Python regular expression")
            elif keyword == "regex":
                self._unmap(statement, _CHECKER_REASONS["regex_no_match"])
            else:
                self._unmap(statement, _CHECKER_REASONS.get(keyword, "no rainctl equivalent"))
        if "expect_status" not in check:
            # keepalived's default is 200-299; rainctl's (any 2xx or 3xx) would pass redirects.
            check["expect_status"] = list(range(200, 300))

    def _command(self, statement: Statement) -> list[str]:
        text = _arity(statement, 1)[0]
        try:
            words = shlex.split(text)
        except ValueError as error:
            raise MigrationError(f"{statement.origin}: misc_path {text!r}: {error}") from None
        if not words:
            raise MigrationError(f"{statement.origin}: misc_path is empty")
        return words

    def _add_service(self, service: _Service) -> None:
        document = service.document
        key = (document["vip"], document["port"], document["protocol"])
        first = self.services.get(key)
        if first is None:
            self.services[key] = service
        elif first.document != document:
            self.notes.append(
                Note(
                    service.origin,
                    f"differs from the same service at {first.origin}: kept that one",
                )
            )

    # ---- the cluster ---------------------------------------------------------------------

    def finish(self) -> ImportResult:
        self._add_peer_nodes()
        for service in self.services.values():
            vip = service.document["vip"]
            if vip not in self.vips:
                self.vips[vip] = _Vip(vip, service.origin)
                self.notes.append(
                    Note(service.origin, f"{vip} is in no vrrp_instance: added to the VIP pool")
                )
        file_order = {source: index for index, source in enumerate(self.sources)}
        self.unmapped.sort(key=lambda entry: (file_order[entry.origin.file], entry.origin.line))
        homes = self._homes()
        placeholders = self._placeholders()
        document = self._document(homes)
        try:
            config = ClusterConfig.model_validate(document)
        except ValidationError as error:
            raise MigrationError(
                f"{self.nodes[0].source}: the imported config is not valid for rainctl: "
                f"{format_validation_error(error, ClusterConfig)}"
            ) from None
        text = render(
            TEMPLATE,
            config=config,
            sources=self.sources,
            node_sources={node.node_id: node.source for node in self.nodes},
            placeholders={p.key: p.text for p in placeholders},
            vip_origins={vip.address: str(vip.origin) for vip in self.vips.values()},
            service_origins=[str(s.origin) for s in self.services.values()],
            real_server_origins=[
                [str(origin) for origin in s.real_server_origins] for s in self.services.values()
            ],
            unmapped=self.unmapped,
            notes=self.notes,
            check_keys=_check_keys,
        )
        return ImportResult(
            config=config,
            text=text,
            sources=tuple(self.sources),
            placeholders=tuple(placeholders),
            notes=tuple(self.notes),
            unmapped=tuple(self.unmapped),
        )

    def _add_peer_nodes(self) -> None:
        if len(self.nodes) > 1:
            return
        node = self.nodes[0]
        for peer in node.unicast_peers:
            self.nodes.append(_Node(len(self.nodes) + 1, None, unicast_source=peer))
        if len(self.nodes) == 1:
            self.nodes.append(_Node(2, None))
            self.notes.append(
                Note(
                    None,
                    "one file and no unicast_peer: a pair of nodes is assumed (keepalived's "
                    "usual setup); add [[nodes]] entries for more",
                )
            )

    def _homes(self) -> dict[str, int | None]:
        homes: dict[str, int | None] = {}
        files = sum(1 for node in self.nodes if node.source is not None)
        if files == 1:
            if self.vips:
                self.notes.append(
                    Note(
                        None,
                        "one file: the other nodes' priorities are unknown, so the VIPs get no "
                        "home (give every node's keepalived.conf to derive them)",
                    )
                )
            return dict.fromkeys(self.vips)
        for vip in self.vips.values():
            ranked = sorted(vip.priorities.items(), key=lambda item: -item[1])
            if not ranked:
                homes[vip.address] = None
            elif len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
                homes[vip.address] = None
                self.notes.append(
                    Note(
                        vip.origin,
                        f"{vip.address}: nodes {ranked[0][0]} and {ranked[1][0]} have the same "
                        f"priority {ranked[0][1]}: no home",
                    )
                )
            else:
                homes[vip.address] = ranked[0][0]
        return homes

    def _placeholders(self) -> list[Placeholder]:
        placeholders: list[Placeholder] = []
        for index, node in enumerate(self.nodes):
            if node.unicast_source is not None:
                host = node.unicast_source
                host = f"[{host}]" if ":" in host else host
                hint = f"e.g. {host}:{RING_PORT_SUGGESTED}, its VRRP unicast address"
            else:
                hint = f"host:port, e.g. 192.0.2.{node.node_id}:{RING_PORT_SUGGESTED}"
            placeholders.append(
                Placeholder(
                    f"nodes[{index}].address",
                    f"{PLACEHOLDER_PREFIX}: node {node.node_id}'s ring address, {hint}>",
                )
            )
        placeholders.append(
            Placeholder(
                "cluster.key_file",
                f"{PLACEHOLDER_PREFIX}: path of the cluster key file, see docs/operations.md 1>",
            )
        )
        return placeholders

    def _document(self, homes: dict[str, int | None]) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = []
        for node in self.nodes:
            entry: dict[str, Any] = {
                "id": node.node_id,
                "address": f"192.0.2.{node.node_id}:{RING_PORT_SUGGESTED}",  # stand-in
            }
            if node.interfaces:
                front, _ = node.interfaces.most_common(1)[0]
                entry["front_interface"] = front
                if len(node.interfaces) > 1:
                    self.notes.append(
                        Note(
                            None,
                            f"node {node.node_id}: VIPs on {', '.join(sorted(node.interfaces))}: "
                            f"rainctl puts them all on one front_interface ({front})",
                        )
                    )
            if node.sync_interface is not None and node.sync_interface != entry.get(
                "front_interface"
            ):
                entry["back_interface"] = node.sync_interface
            nodes.append(entry)
        cluster: dict[str, Any] = {
            "name": "from-keepalived",
            "id": 1,
            "key_file": "stand-in",
            "quorum": "none" if len(self.nodes) == 2 else "majority",
        }
        rebalance: dict[str, Any] = {}
        if self.nopreempt and all(self.nopreempt):
            rebalance["preempt"] = False
        elif any(self.nopreempt):
            self.notes.append(
                Note(
                    None,
                    "nopreempt on some instances only: rainctl's preempt is one setting, kept on",
                )
            )
        if self.preempt_delays_s:
            rebalance["settle_ms"] = max(1, round(max(self.preempt_delays_s) * 1000))
        sync: dict[str, Any] = {}
        if any(node.sync_interface is not None for node in self.nodes):
            sync = {"enabled": True, "sync_id": max(self.sync_ids, default=0)}
        vips = sorted(self.vips, key=_address_order)
        return {
            "cluster": cluster,
            "rebalance": rebalance,
            "nodes": nodes,
            "vips": [
                {"address": vip, **({"home": homes[vip]} if homes.get(vip) else {})} for vip in vips
            ],
            "sync": sync,
            "services": [service.document for service in self.services.values()],
        }


# ---- helpers -------------------------------------------------------------------------------


def _factor_health(service: dict[str, Any], real_servers: list[dict[str, Any]]) -> None:
    """One `[services.health]` when every real server has the same check."""
    checks = [server["health"] for server in real_servers]
    if checks and all(check == checks[0] for check in checks):
        service["health"] = checks[0]
        for server in real_servers:
            del server["health"]


def _check_keys(check: CheckOverrides) -> dict[str, Any]:
    """The keys a check table sets, as TOML-ready values (enums by value)."""
    return check.model_dump(mode="json", exclude_none=True)


def _block(statement: Statement) -> tuple[Statement, ...]:
    if statement.children is None:
        raise MigrationError(f"{statement.origin}: {statement.keyword} needs a {{ ... }} block")
    return statement.children


def _arity(statement: Statement, count: int) -> tuple[str, ...]:
    if statement.is_block or len(statement.arguments) != count:
        raise MigrationError(
            f"{statement.origin}: {statement.keyword} takes {count} value"
            f"{'s' if count > 1 else ''} (got {len(statement.arguments)})"
        )
    return statement.arguments


def _at_least(statement: Statement, count: int) -> tuple[str, ...]:
    if len(statement.arguments) < count:
        raise MigrationError(f"{statement.origin}: {statement.keyword} needs a value")
    return statement.arguments


def _options(words: list[str]) -> dict[str, str]:
    """`key value` pairs; a lone last word maps to ""."""
    options: dict[str, str] = {}
    while words:
        key = words.pop(0)
        options[key] = words.pop(0) if words else ""
    return options


def _integer(text: str, statement: Statement, low: int, high: int) -> int:
    if re.fullmatch(r"[0-9]+", text) is None or not low <= int(text) <= high:
        raise MigrationError(
            f"{statement.origin}: {statement.keyword} {text!r}: not an integer in {low}..{high}"
        )
    return int(text)


def _seconds(text: str, statement: Statement) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise MigrationError(f"{statement.origin}: {statement.keyword} {text!r}: not a time in s")
    return value


def _clamped_ms(statement: Statement, low: int, high: int, notes: list[Note]) -> int:
    milliseconds = round(_seconds(_arity(statement, 1)[0], statement) * 1000)
    clamped = min(max(milliseconds, low), high)
    if clamped != milliseconds:
        notes.append(
            Note(statement.origin, f"{statement.text()}: {clamped} ms is rainctl's nearest value")
        )
    return clamped


def _boolean(statement: Statement) -> bool:
    if not statement.arguments:
        return True
    word = statement.arguments[0].lower()
    if word in ("on", "true", "yes"):
        return True
    if word in ("off", "false", "no"):
        return False
    raise MigrationError(f"{statement.origin}: {statement.keyword} {word!r}: not a boolean")


def _address(text: str, statement: Statement) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise MigrationError(
            f"{statement.origin}: {text!r} is not an IPv4 or IPv6 address"
        ) from None
    if ip.is_unspecified or ip.is_multicast:
        raise MigrationError(f"{statement.origin}: {text!r} is an unspecified or multicast address")
    return str(ip)


def _address_order(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def _status_codes(statement: Statement) -> list[int]:
    codes: set[int] = set()
    for word in _at_least(statement, 1):
        low_text, _, high_text = word.partition("-")
        low = _integer(low_text, statement, 100, 599)
        high = _integer(high_text, statement, 100, 599) if high_text else low
        codes.update(range(low, high + 1))
    return sorted(codes)


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True
