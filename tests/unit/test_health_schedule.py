"""rainctl.health.schedule on a real event loop: order, replacement, drops, coalescing."""

from __future__ import annotations

import asyncio
import itertools

from rainctl.health.schedule import COALESCE_S, ProbeSchedule


def test_keys_fire_in_due_order_once_each_and_dropped_ones_never() -> None:
    async def main() -> list[int]:
        fired: list[int] = []
        schedule = ProbeSchedule(asyncio.get_running_loop(), lambda key, now: fired.append(key))
        schedule.at(3, 0.06)
        schedule.at(1, 0.02)
        schedule.at(2, 0.04)
        schedule.at(4, 0.03)
        schedule.drop(4)
        schedule.at(5, 0.20)
        schedule.at(5, 0.01)  # moved earlier: fires once, at the new time
        await asyncio.sleep(0.3)
        assert len(schedule) == 0
        schedule.close()
        return fired

    assert asyncio.run(main()) == [5, 1, 2, 3]


def test_a_key_scheduled_again_from_its_callback_fires_again() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        times: list[float] = []

        def due(key: int, now: float) -> None:
            assert now <= loop.time()
            times.append(now)
            if len(times) < 4:
                schedule.at(key, 0.02)

        schedule = ProbeSchedule(loop, due)
        schedule.at(7, 0.0)
        await asyncio.sleep(0.3)
        schedule.close()
        return times

    times = asyncio.run(main())
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= 0.02 - COALESCE_S for gap in gaps)


def test_close_stops_everything() -> None:
    async def main() -> list[int]:
        fired: list[int] = []
        schedule = ProbeSchedule(asyncio.get_running_loop(), lambda key, now: fired.append(key))
        schedule.at(1, 0.02)
        schedule.close()
        await asyncio.sleep(0.1)
        return fired

    assert asyncio.run(main()) == []
