"""What a reload of a large config costs on the host, piece by piece (S1 live, issue 7).

Run from the repository root:

    python tests/bench/bench_config_reread.py [--services 1000] [--trials 20]

The file: the shipped example config plus --services services of 10 unchecked real servers
(the table of bench_ipvs_live.py). Timed, p50 / max over --trials: parsing the TOML with
tomllib and with rtoml (what rainctl.config.loader uses); a fresh `load_config` +
`to_services`; the re-reader (rainctl.config.reread) reading the file unchanged and with 1 %
of the services' weights changed; the IPVS desired table made from scratch, the whole diff
of two equal tables, and the diff of a 1 % change between desired tables that share the
unchanged entries (rainctl.core.dataplane.diff_changed).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import rtoml

from rainctl.config import load_config, to_services
from rainctl.config.reread import ConfigRereader
from rainctl.core.dataplane import desired_entry, desired_ipvs, diff_changed, diff_ipvs
from tests.bench.bench_ipvs_live import CHANGED_PERMILLE, _services

EXAMPLE = Path(__file__).resolve().parents[2] / "templates" / "cluster.example.toml"
VIP = "198.18.0.100"


def _timed(label: str, trials: int, work: Callable[[], object]) -> None:
    times_ms = []
    for _ in range(trials):
        started = time.perf_counter()
        work()
        times_ms.append((time.perf_counter() - started) * 1000)
    print(f"{label}: p50 {statistics.median(times_ms):.0f} / max {max(times_ms):.0f} ms")


def run(services: int, trials: int) -> None:
    base = EXAMPLE.read_text(encoding="utf-8")
    changed = {index: 2 for index in range(services * CHANGED_PERMILLE // 1000)}
    texts = [base + "\n" + _services([VIP], services, weights) for weights in ({}, changed)]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "cluster.toml"
        path.write_text(texts[0], encoding="utf-8")
        _timed("parse, tomllib", trials, lambda: tomllib.loads(texts[0]))
        _timed("parse, rtoml", trials, lambda: rtoml.loads(texts[0]))
        _timed("load_config + to_services", trials, lambda: to_services(load_config(path)))
        reader = ConfigRereader()
        first = reader.read(path)
        _timed("re-read, unchanged", trials, lambda: reader.read(path))

        versions = itertools.cycle((texts[1], texts[0]))

        def reread_changed() -> None:
            path.write_text(next(versions), encoding="utf-8")
            reader.read(path)

        _timed("re-read, 1 % changed (file written each time)", trials, reread_changed)
        path.write_text(texts[1], encoding="utf-8")
        second = reader.read(path)
    specs, changed_specs = first.services, second.services
    _timed("desired table from scratch", trials, lambda: desired_ipvs(specs))
    table = desired_ipvs(specs)
    _timed("whole diff of two equal tables", trials, lambda: diff_ipvs(table, desired_ipvs(specs)))
    entries = {id(spec): desired_entry(spec) for spec in specs}
    table = desired_ipvs(specs, lambda spec: entries[id(spec)])
    changed_table = desired_ipvs(
        changed_specs, lambda spec: entries.get(id(spec)) or desired_entry(spec)
    )
    ops = diff_changed(table, changed_table)
    _timed(f"diff of a 1 % change, entries shared ({len(ops)} operations)", trials,
           lambda: diff_changed(table, changed_table))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="100 services, 3 trials")
    arguments = parser.parse_args()
    if arguments.quick:
        run(100, 3)
    else:
        run(arguments.services, arguments.trials)


if __name__ == "__main__":
    main()
