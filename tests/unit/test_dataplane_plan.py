"""IPVS planning (rainctl/core/dataplane.py): desired table, diff laws, operation order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rainctl.core.dataplane import (
    IP_VS_SVC_F_SCHED_FALLBACK,
    IP_VS_SVC_F_SCHED_MH_PORT,
    ForwardingMethod,
    IpvsEntry,
    IpvsOp,
    IpvsRealServer,
    IpvsService,
    OpKind,
    RealServerSpec,
    Scheduler,
    ServiceProtocol,
    ServiceSpec,
    apply_ipvs,
    desired_entry,
    desired_ipvs,
    diff_changed,
    diff_ipvs,
    in_key_order,
    normalised,
)

# ---- strategies: small key spaces so that tables overlap ---------------------------------

VIPS = ("198.18.0.100", "198.18.0.101", "2001:db8::100")
SERVERS = ("198.18.1.11", "198.18.1.12", "198.18.1.13", "2001:db8::11", "2001:db8::12")

services = st.builds(
    IpvsService,
    vip=st.sampled_from(VIPS),
    port=st.sampled_from((80, 443)),
    protocol=st.sampled_from(ServiceProtocol),
    scheduler=st.sampled_from(("wlc", "rr", "mh")),
    persistence_s=st.sampled_from((0, 300)),
    flags=st.sampled_from((0, IP_VS_SVC_F_SCHED_MH_PORT)),
)
real_servers = st.builds(
    IpvsRealServer,
    address=st.sampled_from(SERVERS),
    port=st.sampled_from((80, 8080)),
    weight=st.integers(0, 3),
    forwarding=st.sampled_from(ForwardingMethod),
)
entries = st.builds(
    IpvsEntry,
    service=services,
    real_servers=st.lists(real_servers, max_size=4, unique_by=lambda rs: rs.key).map(tuple),
)
tables = st.lists(entries, max_size=6, unique_by=lambda entry: entry.service.key).map(normalised)


@given(current=tables, desired=tables)
def test_applying_the_diff_yields_the_desired_table(
    current: tuple[IpvsEntry, ...], desired: tuple[IpvsEntry, ...]
) -> None:
    assert apply_ipvs(current, diff_ipvs(current, desired)) == desired


@given(table=tables)
def test_no_difference_no_operation(table: tuple[IpvsEntry, ...]) -> None:
    assert diff_ipvs(table, table) == []


@given(current=tables, desired=tables)
def test_unchanged_services_get_no_operation(
    current: tuple[IpvsEntry, ...], desired: tuple[IpvsEntry, ...]
) -> None:
    unchanged = set(current) & set(desired)
    touched = {op.service.key for op in diff_ipvs(current, desired)}
    assert not touched & {entry.service.key for entry in unchanged}


@given(current=tables, desired=tables)
def test_changes_in_place_never_delete_a_kept_service(
    current: tuple[IpvsEntry, ...], desired: tuple[IpvsEntry, ...]
) -> None:
    kept = {e.service.key for e in current} & {e.service.key for e in desired}
    for op in diff_ipvs(current, desired):
        if op.service.key in kept:
            assert op.kind not in {OpKind.DELETE_SERVICE, OpKind.ADD_SERVICE}


@given(current=tables, desired=tables)
def test_operation_order(current: tuple[IpvsEntry, ...], desired: tuple[IpvsEntry, ...]) -> None:
    ops = diff_ipvs(current, desired)
    for index, op in enumerate(ops):
        before = ops[:index]
        after = ops[index + 1 :]
        same = op.service.key
        if op.kind is OpKind.ADD_REAL_SERVER:
            # A new service is added before its real servers.
            assert not any(o.kind is OpKind.ADD_SERVICE and o.service.key == same for o in after)
        if op.kind is OpKind.DELETE_REAL_SERVER:
            assert not any(
                o.kind is OpKind.DELETE_SERVICE and o.service.key == same for o in before
            )
    # Make before break: every operation that removes comes after every one that adds or
    # changes (the adds neither leave a service without real servers nor walk the kernel's
    # list of just-deleted real servers).
    removing = [op.kind in {OpKind.DELETE_REAL_SERVER, OpKind.DELETE_SERVICE} for op in ops]
    assert removing == sorted(removing)
    # Deterministic: the same inputs in another order give the same list.
    assert diff_ipvs(tuple(reversed(current)), tuple(reversed(desired))) == ops


# ---- examples ----------------------------------------------------------------------------

WEB = IpvsService("198.18.0.100", 80, ServiceProtocol.TCP, "wlc")
RS1 = IpvsRealServer("198.18.1.11", 80, 1, ForwardingMethod.DR)
RS2 = IpvsRealServer("198.18.1.12", 80, 1, ForwardingMethod.DR)


def test_desired_table_from_the_config_values() -> None:
    specs = [
        ServiceSpec(
            vip="2001:db8::100",
            port=53,
            protocol=ServiceProtocol.UDP,
            scheduler=Scheduler.MH,
            mh_port=True,
            persistence_s=60,
            real_servers=(RealServerSpec("2001:db8::12", 5353, 0, ForwardingMethod.NAT),),
        ),
        ServiceSpec(
            vip="198.18.0.100",
            port=80,
            real_servers=(RealServerSpec("198.18.1.12", 80), RealServerSpec("198.18.1.11", 80)),
        ),
    ]
    assert desired_ipvs(specs) == (
        IpvsEntry(WEB, (RS1, RS2)),
        IpvsEntry(
            IpvsService(
                "2001:db8::100",
                53,
                ServiceProtocol.UDP,
                "mh",
                60,
                IP_VS_SVC_F_SCHED_MH_PORT | IP_VS_SVC_F_SCHED_FALLBACK,
            ),
            (IpvsRealServer("2001:db8::12", 5353, 0, ForwardingMethod.NAT),),
        ),
    )


def test_duplicate_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="appears twice"):
        desired_ipvs([ServiceSpec("198.18.0.100", 80), ServiceSpec("198.18.0.100", 80)])
    with pytest.raises(ValueError, match="appears twice"):
        normalised([IpvsEntry(WEB, (RS1, RS1))])


def test_a_weight_change_is_one_update_in_place() -> None:
    drained = IpvsRealServer("198.18.1.12", 80, 0, ForwardingMethod.DR)
    assert diff_ipvs([IpvsEntry(WEB, (RS1, RS2))], [IpvsEntry(WEB, (RS1, drained))]) == [
        IpvsOp(OpKind.UPDATE_REAL_SERVER, WEB, drained)
    ]


def test_a_scheduler_change_updates_the_service_and_keeps_its_servers() -> None:
    rr = IpvsService("198.18.0.100", 80, ServiceProtocol.TCP, "rr", persistence_s=30)
    assert diff_ipvs([IpvsEntry(WEB, (RS1,))], [IpvsEntry(rr, (RS1,))]) == [
        IpvsOp(OpKind.UPDATE_SERVICE, rr)
    ]


def test_order_within_one_service_and_across_services() -> None:
    rr = IpvsService("198.18.0.100", 80, ServiceProtocol.TCP, "rr")
    rs1_nat = IpvsRealServer("198.18.1.11", 80, 1, ForwardingMethod.NAT)
    old = IpvsService("198.18.0.101", 80, ServiceProtocol.TCP, "wlc")
    new = IpvsService("198.18.0.100", 443, ServiceProtocol.TCP, "wlc")
    ops = diff_ipvs(
        [IpvsEntry(WEB, (RS1, RS2)), IpvsEntry(old, (RS1,))],
        [IpvsEntry(rr, (rs1_nat,)), IpvsEntry(new, (RS2,))],
    )
    assert [str(op) for op in ops] == [
        "update service tcp 198.18.0.100:80",
        "update real server 198.18.1.11:80 of tcp 198.18.0.100:80",
        "add service tcp 198.18.0.100:443",
        "add real server 198.18.1.12:80 of tcp 198.18.0.100:443",
        "delete real server 198.18.1.12:80 of tcp 198.18.0.100:80",
        "delete real server 198.18.1.11:80 of tcp 198.18.0.101:80",
        "delete service tcp 198.18.0.101:80",
    ]


def test_replaced_real_servers_are_added_before_the_old_ones_go() -> None:
    rs3 = IpvsRealServer("198.18.1.13", 80, 1, ForwardingMethod.DR)
    ops = diff_ipvs([IpvsEntry(WEB, (RS1,))], [IpvsEntry(WEB, (rs3,))])
    assert ops == [
        IpvsOp(OpKind.ADD_REAL_SERVER, WEB, rs3),
        IpvsOp(OpKind.DELETE_REAL_SERVER, WEB, RS1),
    ]


def test_the_model_refuses_what_the_kernel_refuses() -> None:
    with pytest.raises(ValueError, match="exists"):
        apply_ipvs([IpvsEntry(WEB)], [IpvsOp(OpKind.ADD_SERVICE, WEB)])
    with pytest.raises(ValueError, match="no such service"):
        apply_ipvs([], [IpvsOp(OpKind.ADD_REAL_SERVER, WEB, RS1)])
    with pytest.raises(ValueError, match="no such real server"):
        apply_ipvs([IpvsEntry(WEB)], [IpvsOp(OpKind.UPDATE_REAL_SERVER, WEB, RS1)])
    assert apply_ipvs([IpvsEntry(WEB, (RS1,))], [IpvsOp(OpKind.DELETE_SERVICE, WEB)]) == ()


@given(before=tables, after=tables, keep=st.lists(st.booleans(), min_size=6, max_size=6))
def test_the_diff_of_changed_entries_is_the_whole_diff(
    before: tuple[IpvsEntry, ...], after: tuple[IpvsEntry, ...], keep: list[bool]
) -> None:
    # `after` shares some entry objects with `before` (unchanged services), as the
    # reconciler's consecutive desired tables do; the rest may differ or be equal by value.
    shared = {entry.service.key: entry for entry, kept in zip(before, keep, strict=False) if kept}
    mixed = normalised([*(e for e in after if e.service.key not in shared), *shared.values()])
    mixed = tuple(shared.get(entry.service.key, entry) for entry in mixed)
    assert diff_changed(before, mixed) == diff_ipvs(before, mixed)


def test_desired_entries_keep_their_objects_in_the_table() -> None:
    specs = [
        ServiceSpec(vip, 80, real_servers=(RealServerSpec("198.18.1.12", 80),
                                           RealServerSpec("198.18.1.11", 80)))
        for vip in ("198.18.0.101", "198.18.0.100")
    ]  # fmt: skip
    made = [desired_entry(spec) for spec in specs]
    table = in_key_order(made)
    assert table == desired_ipvs(specs)
    assert [id(entry) for entry in table] == [id(made[1]), id(made[0])]
    assert [rs.address for rs in table[0].real_servers] == ["198.18.1.11", "198.18.1.12"]
    with pytest.raises(ValueError, match="appears twice"):
        in_key_order([made[0], desired_entry(specs[0])])
