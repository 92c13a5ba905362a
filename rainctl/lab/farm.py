"""A back-end farm for the check benchmarks: COUNT listening TCP ports that accept and close
(a live back-end each), counting the connections they accepted.

`python -m rainctl.lab.farm --host ADDR --count N --ports-file P --counts-file C`: binds N
ports (chosen by the kernel) on ADDR, writes them space-separated to P once listening, then
every second writes "<monotonic seconds> <accepted so far>" to C (tmp + rename). Runs until
killed. On the host for loopback benchmarks, or in a lab back-end's namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from pathlib import Path

BACKLOG = 256


def _write(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text, encoding="ascii")
    scratch.replace(path)


async def serve(host: str, count: int, ports_file: Path, counts_file: Path) -> None:
    accepted = 0

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    servers = [await asyncio.start_server(accept, host, 0, backlog=BACKLOG) for _ in range(count)]
    _write(ports_file, " ".join(str(server.sockets[0].getsockname()[1]) for server in servers))
    while True:
        _write(counts_file, f"{time.monotonic()} {accepted}")
        await asyncio.sleep(1)


def read_counts(counts_file: Path) -> tuple[float, int]:
    """(monotonic seconds, connections accepted so far) as the farm last wrote them."""
    moment, accepted = counts_file.read_text(encoding="ascii").split()
    return float(moment), int(accepted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.farm", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ports-file", type=Path, required=True)
    parser.add_argument("--counts-file", type=Path, required=True)
    arguments = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, arguments.count + BACKLOG))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    asyncio.run(serve(arguments.host, arguments.count, arguments.ports_file, arguments.counts_file))


if __name__ == "__main__":
    main()
