"""The `rainctl` command line: the root Typer app, its error boundary and entry point.

Sub-command modules each expose `register(app)`; they are all registered in one place below.
Expected errors (`RainctlError`) become one line on stderr, `rainctl: error: ...`, and exit
status 2; `--debug` lets them propagate with their traceback instead. Usage errors of every
command (a missing argument, `abc` for an integer, an unknown option) become one line too,
naming the command and pointing at its `--help`, instead of click's boxed panel.
SIGTERM ends a command as Ctrl-C does, by unwinding it (`terminate_by_unwinding`).
"""

from __future__ import annotations

import signal
from importlib import metadata
from types import FrameType
from typing import Annotated, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from rainctl.cli import bench as bench_commands
from rainctl.cli import config as config_commands
from rainctl.cli import daemon as daemon_commands
from rainctl.cli import events as events_commands
from rainctl.cli import lab as lab_commands
from rainctl.cli import metrics as metrics_commands
from rainctl.cli import migrate as migrate_commands
from rainctl.cli import node_setup as node_setup_commands
from rainctl.cli import operate as operate_commands
from rainctl.cli import proxy as proxy_commands
from rainctl.cli import sim as sim_commands
from rainctl.cli import status as status_commands
from rainctl.errors import RainctlError

ERROR_EXIT_CODE = 2


class RainctlGroup(TyperGroup):
    """The root command group; turns expected errors into one-line messages."""

    def invoke(self, ctx: Any) -> Any:
        # `ctx` is the root context of typer's bundled click; its params hold `--debug`.
        try:
            return super().invoke(ctx)
        except RainctlError as exc:
            if ctx.params.get("debug"):
                raise
            typer.echo(f"rainctl: error: {exc}", err=True)
            raise typer.Exit(code=ERROR_EXIT_CODE) from exc
        except NoArgsIsHelpError:
            raise  # a bare `rainctl node`: its help is the answer
        except UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "rainctl"
            message = " ".join(exc.format_message().split())
            typer.echo(f"rainctl: error: {path}: {message} (see '{path} --help')", err=True)
            raise typer.Exit(code=ERROR_EXIT_CODE) from exc


app = typer.Typer(
    name="rainctl",
    cls=RainctlGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# `--debug` is read from the context's params by `RainctlGroup.invoke`.
@app.callback()
def root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of errors.")] = False,
) -> None:
    """Control a RAIN token-ring cluster of Linux IPVS front nodes."""


@app.command()
def version() -> None:
    """Print rainctl's version."""
    typer.echo(f"rainctl {metadata.version('rainctl')}")


# Every sub-command module, registered here and nowhere else.
bench_commands.register(app)
config_commands.register(app)
daemon_commands.register(app)
events_commands.register(app)
lab_commands.register(app)
metrics_commands.register(app)
migrate_commands.register(app)
operate_commands.register(app)
node_setup_commands.register(operate_commands.node_app)
proxy_commands.register(app)
sim_commands.register(app)
status_commands.register(app)


def terminate_by_unwinding() -> None:
    """Make SIGTERM raise SystemExit(143) in the main thread, once.

    Why: with the default action a SIGTERM (`kill`, `timeout`, a CI job cancelled, a
    command started in a script's background, where SIGINT is ignored) ended the process on
    the spot, and what it had started outlived it: `rainctl bench soak` left its lab (three
    UML guests, the prober, the namespaces) running. Unwinding runs every `finally`, so a
    benchmark takes its labs down as after Ctrl-C. Further SIGTERMs are ignored so that the
    cleanup runs to its end (SIGKILL still ends it). A SIGTERM its parent had ignored stays
    ignored; the daemon and the proxy install handlers of their own (a graceful leave).
    """
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def unwind(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def main() -> None:
    terminate_by_unwinding()
    app(prog_name="rainctl")
