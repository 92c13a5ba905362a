"""VIP addresses on Linux through rtnetlink (pyroute2): claim 10, docs/protocol.md section 8.

Every VIP of the pool is configured on this node at all times, so the node accepts traffic
for any VIP; only the owner answers ARP / neighbour solicitations for it:

- owned VIPs sit on the front (LAN) interface, the others on a local device (`rainctl0`,
  type dummy, created if missing; on kernels built without dummy links an empty bridge, which
  behaves the same for this purpose, is created instead);
- `arp_ignore=1` and `arp_announce=2` on the front interface and on `all`: the node answers
  ARP only for addresses of the interface the request came in on, and never uses a VIP as the
  source of its own ARP (IPv6 neighbour discovery is per interface already);
- IPv6 VIPs are added with `nodad` (no duplicate address detection delay on a takeover);
- with a lease (`lease_s`), the owned VIPs' front addresses carry a valid lifetime that the
  daemon keeps renewing (`renew_lease`): if it dies or hangs, the kernel removes them by
  itself and the node stops answering ARP / NS for them (GOALS.md F8);
- addresses are host prefixes (/32, /128) marked with the address protocol `RAINCTL_PROTO`
  (IFA_PROTO), so the adapter recognises its own addresses on the front interface and never
  touches the node's other addresses.

Every call reads the kernel first (it is the source of truth: one dump of the addresses for
both devices; the two interface indexes are kept between calls, looked up again after any
failed call, a lapse or a pool change) and changes only what differs:
EEXIST on add and EADDRNOTAVAIL / ENOENT on delete count as success. A VIP that moves between
the local device and the front interface is added to its new device before it is deleted from
the old one, so it is never absent from both. pyroute2 objects are turned into `_Address`
values right at the netlink call; netlink and sysctl failures become `KernelError`.

The calls block (netlink round trips); the reconciler runs them in a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from rainctl.core.types import Vip
from rainctl.errors import KernelError

__all__ = ["IpAddress", "KernelError", "LinuxVipAddresses", "VipState", "parse_vip"]

DEFAULT_LOCAL_DEVICE = "rainctl0"
RENEW_STALE_S = 0.1
"""A lease renewal that finds itself this long past its read of the kernel stops (a freeze):
renewing then could re-create an address that expired in between."""
RAINCTL_PROTO = 0x52
"""IFA_PROTO value of the addresses rainctl manages (any value above the kernel's 0..3)."""

IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
SYSCTL_ROOT = Path("/proc/sys/net/ipv4/conf")
ARP_SYSCTLS = {"arp_ignore": 1, "arp_announce": 2}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

log = logging.getLogger("rainctl.kernel.addresses")


@dataclass(frozen=True, slots=True)
class _Address:
    ip: IpAddress
    prefixlen: int
    flags: int
    proto: int


@dataclass(frozen=True, slots=True)
class VipState:
    """What the kernel holds for the VIPs, as plain values (the contract tests read it)."""

    on_front: frozenset[Vip]
    """rainctl's addresses on the front interface: the owned VIPs."""
    on_local: frozenset[Vip]
    """rainctl's addresses on the local device: the configured, not owned VIPs."""
    nodad: frozenset[Vip]
    """IPv6 VIPs that carry IFA_F_NODAD and are usable (neither tentative nor DAD-failed)."""


def parse_vip(vip: Vip) -> IpAddress:
    try:
        return ipaddress.ip_address(vip)
    except ValueError:
        raise ValueError(f"not an IP address: {vip!r}") from None


def _host_prefix(ip: IpAddress) -> int:
    return 32 if ip.version == 4 else 128


def _describe(exc: NetlinkError) -> str:
    code = exc.code
    return f"{os.strerror(code)} (errno {code})" if code else str(exc)


class LinuxVipAddresses:
    """`VipAddresses` on the running kernel (the network namespace of the calling thread)."""

    def __init__(
        self,
        front: str,
        *,
        local_device: str = DEFAULT_LOCAL_DEVICE,
        sysctl_root: Path = SYSCTL_ROOT,
        lease_s: int = 0,
    ) -> None:
        self.front = front
        self.local_device = local_device
        self.lease_s = lease_s
        """Lifetime of the owned VIPs' front addresses (0: permanent); see `renew_lease`."""
        self._sysctl_root = sysctl_root
        self._pool: frozenset[IpAddress] = frozenset()
        self._owned: frozenset[IpAddress] = frozenset()
        self._leased_at = time.monotonic()
        """When the owned set's lease was last granted or renewed (monotonic s)."""
        self._indexes: dict[str, int] = {}
        """Interface name -> index (`_index`)."""

    # ---- VipAddresses ------------------------------------------------------------------------

    def ensure_all(self, vips: Sequence[Vip]) -> None:
        """Configure exactly these VIPs (new ones on the local device, unknown ones removed)."""
        pool = frozenset(parse_vip(vip) for vip in vips)
        self._indexes.clear()  # devices may have been created or replaced since
        with self._netlink() as ipr:
            front = self._index(ipr, self.front)
            local = self._ensure_local_device(ipr)
            self._write_arp_sysctls()
            ours = self._ours(ipr)
            current = {index: ours.get(index, frozenset()) for index in (front, local)}
            for ip in sorted(pool - current[front] - current[local], key=str):
                self._add(ipr, local, ip)
            for index, present in current.items():
                for ip in sorted(present - pool, key=str):
                    self._delete(ipr, index, ip)
            ours = self._ours(ipr)
            missing = pool - ours.get(front, frozenset()) - ours.get(local, frozenset())
            if missing:
                # Added without error but not seen with our mark: the kernel drops IFA_PROTO.
                raise KernelError(
                    f"added VIPs not found with address protocol {RAINCTL_PROTO:#x} "
                    f"({', '.join(sorted(map(str, missing)))}); this kernel does not keep "
                    "IFA_PROTO (Linux >= 6.1 is needed)"
                )
        self._pool = pool
        self._owned &= pool

    def set_owned(self, vips: Sequence[Vip]) -> None:
        """Put these VIPs on the front interface and every other VIP of the pool on the local
        device, adding before deleting so that a moving VIP is never absent from both."""
        owned = frozenset(parse_vip(vip) for vip in vips)
        unknown = sorted(str(ip) for ip in owned - self._pool)
        if unknown:
            raise ValueError(f"VIPs not configured on this node: {', '.join(unknown)}")
        with self._netlink() as ipr:
            front = self._index(ipr, self.front)
            local = self._index(ipr, self.local_device)
            ours = self._ours(ipr)
            on_front = ours.get(front, frozenset())
            on_local = ours.get(local, frozenset())
            for ip in sorted(self._pool, key=str):
                if ip in owned:
                    target, on_target, other, on_other = front, on_front, local, on_local
                else:
                    target, on_target, other, on_other = local, on_local, front, on_front
                if ip not in on_target:
                    if target == front and self.lease_s:
                        self._new_address(ipr, front, ip, NLM_F_CREATE | NLM_F_EXCL)
                    else:
                        self._add(ipr, target, ip)
                if ip in on_other:
                    self._delete(ipr, other, ip)
        self._owned = owned
        self._leased_at = time.monotonic()

    def renew_lease(self) -> frozenset[Vip]:
        """Give the owned VIPs' front addresses `lease_s` more seconds of life.

        The kernel deletes an address whose valid lifetime ran out (within about a second,
        it checks lifetimes on whole-second ticks), so a daemon that stops renewing, killed
        or hung, stops answering ARP for its VIPs by itself. Only addresses still present
        are renewed (a lapsed one is never re-created here: the ring, not the lease, decides
        who owns it); they are returned and dropped from the owned set.
        """
        if not self.lease_s:
            return frozenset()
        owned = self._owned
        renewed_at = time.monotonic()
        with self._netlink() as ipr:
            front = self._index(ipr, self.front)
            present = self._ours(ipr).get(front, frozenset())
            for ip in sorted(owned & present, key=str):
                if time.monotonic() - renewed_at > RENEW_STALE_S:
                    # This thread was frozen (SIGSTOP, an unscheduled guest) after reading
                    # `present`: an address may have expired since, and a replace would
                    # create it again. Renew nothing now; the next round reads afresh.
                    return frozenset()
                self._new_address(ipr, front, ip, NLM_F_REPLACE)
        self._leased_at = renewed_at
        lapsed = owned - present
        if lapsed:
            self._indexes.clear()  # or the front interface was replaced: look it up again
        self._owned = owned - lapsed
        return frozenset(str(ip) for ip in lapsed)

    def owns(self, vip: Vip) -> bool:
        """Whether the last successful `set_owned` put this VIP on the front interface and,
        with a lease, the lease has not run out since the last renewal.

        A cached answer (no netlink), cheap enough for the event loop: the announcer asks it
        before every repeat, so a daemon that wakes from a freeze never announces a VIP
        whose lease ran out meanwhile. Thread-safe (values are replaced, never mutated).
        """
        if self.lease_s and time.monotonic() - self._leased_at > self.lease_s:
            return False
        try:
            return parse_vip(vip) in self._owned
        except ValueError:
            return False

    # ---- reading -----------------------------------------------------------------------------

    def read(self) -> VipState:
        """rainctl's addresses on both devices, read from the kernel."""
        with self._netlink() as ipr:
            addresses = self._addresses(ipr)
            front = addresses.get(self._index(ipr, self.front), [])
            local = addresses.get(self._index(ipr, self.local_device), [])
        unusable = IFA_F_TENTATIVE | IFA_F_DADFAILED
        return VipState(
            on_front=frozenset(str(a.ip) for a in front),
            on_local=frozenset(str(a.ip) for a in local),
            nodad=frozenset(
                str(a.ip)
                for a in (*front, *local)
                if a.ip.version == 6 and a.flags & IFA_F_NODAD and not a.flags & unusable
            ),
        )

    def read_arp_sysctls(self) -> dict[str, dict[str, int]]:
        """{"all": {"arp_ignore": n, "arp_announce": n}, FRONT: {...}} from /proc/sys."""
        return {
            device: {
                name: int((self._sysctl_root / device / name).read_text()) for name in ARP_SYSCTLS
            }
            for device in ("all", self.front)
        }

    # ---- helpers -----------------------------------------------------------------------------

    @contextmanager
    def _netlink(self) -> Iterator[Any]:
        try:
            ipr = IPRoute()
        except (NetlinkError, OSError) as exc:
            raise KernelError(f"cannot open a netlink socket: {exc}") from exc
        try:
            yield ipr
        except BaseException:
            # The interface may have been replaced (a new index): look it up afresh next time.
            self._indexes.clear()
            raise
        finally:
            ipr.close()

    def _index(self, ipr: Any, ifname: str) -> int:
        """The interface's index, looked up once (a dump of every link costs as much as the
        rest of a takeover): kept until a call fails or the pool is configured again."""
        cached = self._indexes.get(ifname)
        if cached is not None:
            return cached
        try:
            found: list[int] = list(ipr.link_lookup(ifname=ifname))
        except NetlinkError as exc:
            raise KernelError(f"looking up interface {ifname}: {_describe(exc)}") from exc
        if not found:
            raise KernelError(f"interface {ifname} does not exist")
        self._indexes[ifname] = int(found[0])
        return int(found[0])

    def _ensure_local_device(self, ipr: Any) -> int:
        name = self.local_device
        if not ipr.link_lookup(ifname=name):
            try:
                ipr.link("add", ifname=name, kind="dummy")
                log.info("created dummy device %s", name)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    pass
                elif exc.code == errno.EOPNOTSUPP:
                    # Kernel without CONFIG_DUMMY: an empty bridge is an equally inert device.
                    self._create(ipr, name, "bridge")
                    log.warning("no dummy links in this kernel: created %s as a bridge", name)
                else:
                    raise KernelError(f"creating device {name}: {_describe(exc)}") from exc
        index = self._index(ipr, name)
        try:
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            raise KernelError(f"setting {name} up: {_describe(exc)}") from exc
        return index

    def _create(self, ipr: Any, name: str, kind: str) -> None:
        try:
            ipr.link("add", ifname=name, kind=kind)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"creating {kind} device {name}: {_describe(exc)}") from exc

    def _write_arp_sysctls(self) -> None:
        for device in ("all", self.front):
            for name, value in ARP_SYSCTLS.items():
                path = self._sysctl_root / device / name
                try:
                    if int(path.read_text()) != value:
                        path.write_text(f"{value}\n")
                        log.info("set net.ipv4.conf.%s.%s = %d", device, name, value)
                except (OSError, ValueError) as exc:
                    raise KernelError(f"setting {path} to {value}: {exc}") from exc

    def _addresses(self, ipr: Any) -> dict[int, list[_Address]]:
        """rainctl's addresses by interface index, from one dump of every address (one
        round trip for both devices)."""
        try:
            messages = list(ipr.addr("dump"))
        except NetlinkError as exc:
            raise KernelError(f"listing addresses: {_describe(exc)}") from exc
        found: dict[int, list[_Address]] = {}
        for message in messages:
            if message.get("IFA_PROTO") != RAINCTL_PROTO:
                continue
            raw = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
            flags = message.get("IFA_FLAGS")
            found.setdefault(int(message["index"]), []).append(
                _Address(
                    ip=ipaddress.ip_address(str(raw)),
                    prefixlen=int(message["prefixlen"]),
                    flags=int(flags if flags is not None else message["flags"]),
                    proto=RAINCTL_PROTO,
                )
            )
        return found

    def _ours(self, ipr: Any) -> dict[int, frozenset[IpAddress]]:
        return {
            index: frozenset(a.ip for a in addresses)
            for index, addresses in self._addresses(ipr).items()
        }

    def _add(self, ipr: Any, index: int, ip: IpAddress) -> None:
        flags = IFA_F_NODAD if ip.version == 6 else 0
        try:
            ipr.addr(
                "add",
                index=index,
                address=str(ip),
                prefixlen=_host_prefix(ip),
                flags=flags,
                proto=RAINCTL_PROTO,
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"adding {ip} to ifindex {index}: {_describe(exc)}") from exc

    def _new_address(self, ipr: Any, index: int, ip: IpAddress, mode: int) -> None:
        """RTM_NEWADDR with a valid and preferred lifetime of `lease_s` (IFA_CACHEINFO,
        which pyroute2's `addr` does not take): `mode` NLM_F_CREATE | NLM_F_EXCL adds,
        NLM_F_REPLACE renews an existing address."""
        message = ifaddrmsg()
        message["family"] = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        message["prefixlen"] = _host_prefix(ip)
        message["index"] = index
        message["attrs"] = [
            ("IFA_LOCAL", str(ip)),
            ("IFA_ADDRESS", str(ip)),
            ("IFA_FLAGS", IFA_F_NODAD if ip.version == 6 else 0),
            ("IFA_PROTO", RAINCTL_PROTO),
            (
                "IFA_CACHEINFO",
                {"ifa_preferred": self.lease_s, "ifa_valid": self.lease_s, "cstamp": 0,
                 "tstamp": 0},
            ),
        ]  # fmt: skip
        # pyroute2 0.9's synchronous nlm_request reads a status key that only its asyncio
        # core sets; give it the default (a list, not a generator) so the call works.
        ipr.status.setdefault("nlm_generator", False)
        try:
            ipr.nlm_request(
                message, msg_type=RTM_NEWADDR, msg_flags=NLM_F_REQUEST | NLM_F_ACK | mode
            )
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise KernelError(f"adding {ip} to ifindex {index}: {_describe(exc)}") from exc

    def _delete(self, ipr: Any, index: int, ip: IpAddress) -> None:
        try:
            ipr.addr("del", index=index, address=str(ip), prefixlen=_host_prefix(ip))
        except NetlinkError as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                raise KernelError(f"deleting {ip} from ifindex {index}: {_describe(exc)}") from exc
