"""`rainctl proxy`: the resumable HTTP/1.1 proxy, standalone (no cluster)."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from rainctl.errors import OptionError
from rainctl.logs import LOG_FORMAT
from rainctl.proxy.settings import (
    RESUMES_MAX_DEFAULT,
    STALL_TIMEOUT_MS_DEFAULT,
    Balance,
    ProxySettings,
    parse_endpoint,
)
from rainctl.proxy.worker import run_workers


def proxy(
    *,
    listen: Annotated[
        str,
        typer.Option(
            "--listen", help="Address to serve clients on, HOST:PORT.", show_default=False
        ),
    ],
    backend: Annotated[
        list[str],
        typer.Option(
            "--backend",
            help="A back-end HTTP server, HOST:PORT (repeat the option for more).",
            show_default=False,
        ),
    ],
    balance: Annotated[
        Balance, typer.Option("--balance", help="How a request's back-end is picked.")
    ] = Balance.ROUND_ROBIN,
    stall_timeout_ms: Annotated[
        int,
        typer.Option(
            "--stall-timeout-ms",
            help="A back-end that sends no body byte for this long has failed: the body is "
            "resumed from another one.",
        ),
    ] = STALL_TIMEOUT_MS_DEFAULT,
    resumes_max: Annotated[
        int, typer.Option("--resumes-max", help="Resumes of one response at most.")
    ] = RESUMES_MAX_DEFAULT,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            help="Worker processes sharing the port (SO_REUSEPORT). Default: one per core.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Proxy HTTP/1.1 to the back-ends; a download whose back-end dies mid-body goes on from
    another one (Range + If-Range). SIGTERM: finish in-flight transfers, exit 0. SIGUSR1:
    log the counters."""
    worker_count = workers if workers is not None else (os.cpu_count() or 1)
    if worker_count < 1:
        raise OptionError(f"--workers: {worker_count} is not at least 1")
    if stall_timeout_ms < 1:
        raise OptionError(f"--stall-timeout-ms: {stall_timeout_ms} is not at least 1")
    if resumes_max < 0:
        raise OptionError(f"--resumes-max: {resumes_max} is negative")
    settings = ProxySettings(
        listen=parse_endpoint(listen, "--listen"),
        backends=tuple(parse_endpoint(text, "--backend") for text in backend),
        balance=balance,
        stall_timeout_ms=stall_timeout_ms,
        resumes_max=resumes_max,
    )
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    run_workers(settings, worker_count)


def register(app: typer.Typer) -> None:
    app.command("proxy")(proxy)
