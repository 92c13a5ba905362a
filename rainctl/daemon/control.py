"""The control API: one JSON request per Unix-socket connection, one JSON answer.

Wire form: the client sends one line, `{"command": "pin", "vip": "198.18.0.100", "node": 2}`
(the command's name and its arguments as the other keys), and the daemon answers one line,
`{"ok": true, "result": {...}}` or `{"ok": false, "error": "..."}`, then closes. One request
per connection keeps both ends trivial and makes a stuck client harmless: it holds only its
own connection, which times out. The socket is created mode 0600: only root, or the daemon's
user, may ask, which is the whole access control (commands change the cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rainctl.errors import RainctlError

REQUEST_BYTES_MAX = 32 * 1024 * 1024
"""A pushed configuration document travels in its request (10,000 services: ~2 MB)."""
RESPONSE_BYTES_MAX = 16 * 1024 * 1024
CLIENT_TIMEOUT_S = 5.0
DEFAULT_SOCKET = Path("/run/rainctl/control.sock")

JsonObject = dict[str, Any]
Handler = Callable[["ControlRequest"], "JsonObject | Awaitable[JsonObject]"]
"""Answers at once, or with an awaitable (a command that asks a helper process first)."""
"""Answers a request; raises ControlError for an unknown command, bad arguments or a refusal."""

log = logging.getLogger("rainctl.control")


class ControlError(RainctlError):
    """A control request or answer is malformed, refused, or the daemon is unreachable."""


# ---- encoding (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """A command and its arguments (JSON values by name)."""

    command: str
    arguments: JsonObject = field(default_factory=dict)

    def integer(self, name: str) -> int:
        """Argument `name`, which must be a JSON integer."""
        value = self.arguments.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ControlError(
                f"{self.command}: argument {name!r} must be an integer, got {value!r}"
            )
        return value

    def text(self, name: str) -> str:
        """Argument `name`, which must be a JSON string."""
        value = self.arguments.get(name)
        if not isinstance(value, str):
            raise ControlError(f"{self.command}: argument {name!r} must be a string, got {value!r}")
        return value

    def expect(self, *names: str) -> None:
        """Refuse arguments other than `names` (a typo must not be ignored silently)."""
        unknown = sorted(set(self.arguments) - set(names))
        if unknown:
            allowed = ", ".join(names) or "none"
            raise ControlError(
                f"{self.command}: unknown argument(s) {', '.join(unknown)} (allowed: {allowed})"
            )


def encode_request(command: str, arguments: JsonObject | None = None) -> bytes:
    document: JsonObject = dict(arguments or {})
    if "command" in document:
        raise ControlError("'command' cannot be an argument name")
    document["command"] = command
    return json.dumps(document, sort_keys=True).encode() + b"\n"


def decode_request(line: bytes) -> ControlRequest:
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"request is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("command"), str):
        raise ControlError('request must be a JSON object like {"command": "status"}')
    command: str = document.pop("command")
    return ControlRequest(command, document)


def encode_result(result: JsonObject) -> bytes:
    return json.dumps({"ok": True, "result": result}, separators=(",", ":")).encode() + b"\n"


def encode_error(message: str) -> bytes:
    return json.dumps({"ok": False, "error": message}).encode() + b"\n"


def decode_response(line: bytes) -> JsonObject:
    """The result of an answer; raises ControlError with the daemon's message on refusal."""
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ControlError(f"the daemon's answer is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ControlError("the daemon's answer is not a JSON object")
    if document.get("ok") is True and isinstance(document.get("result"), dict):
        result: JsonObject = document["result"]
        return result
    raise ControlError(f"the daemon refused: {document.get('error', 'no reason given')}")


# ---- server ------------------------------------------------------------------------------


class ControlServer:
    """Serves `handler` on a Unix socket at `path` (created 0600, removed on close)."""

    def __init__(self, server: asyncio.Server, path: Path) -> None:
        self._server = server
        self.path = path

    @classmethod
    async def start(cls, path: Path, handler: Handler) -> ControlServer:
        _claim_socket_path(path)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT_S)
                try:
                    result = handler(decode_request(line))
                    if inspect.isawaitable(result):
                        result = await result
                    answer = encode_result(result)
                except RainctlError as exc:  # ControlError and every expected failure
                    answer = encode_error(str(exc))
                writer.write(answer)
                await asyncio.wait_for(writer.drain(), CLIENT_TIMEOUT_S)
            except (TimeoutError, OSError, ValueError) as exc:
                # ValueError: a request line over the reader's limit. The client's problem.
                log.debug("control connection dropped: %s", exc)
            finally:
                writer.close()

        # The umask makes the socket 0600 from its creation (no window in which another
        # user could connect); the daemon is single-threaded at this point.
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(serve, path=str(path), limit=REQUEST_BYTES_MAX)
        except OSError as exc:
            raise ControlError(
                f"cannot listen on control socket {path}: {exc.strerror or exc}"
            ) from exc
        finally:
            os.umask(old_umask)
        return cls(server, path)

    def close(self) -> None:
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _claim_socket_path(path: Path) -> None:
    """Create the socket's directory; remove a stale socket, refuse a live one."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlError(f"cannot create {path.parent}: {exc.strerror or exc}") from exc
    if not path.exists():
        return
    if not path.is_socket():
        raise ControlError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left behind by a daemon that died; nobody listens
    else:
        raise ControlError(f"another daemon is listening on {path}")
    finally:
        probe.close()


# ---- client ------------------------------------------------------------------------------


def request(
    path: Path,
    command: str,
    timeout_s: float = CLIENT_TIMEOUT_S,
    arguments: JsonObject | None = None,
) -> JsonObject:
    """Ask the daemon listening at `path`; blocking (the CLI has no event loop)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout_s)
        try:
            client.connect(str(path))
            client.sendall(encode_request(command, arguments))
            chunks: list[bytes] = []
            received = 0
            while chunk := client.recv(65536):
                chunks.append(chunk)
                received += len(chunk)
                if received > RESPONSE_BYTES_MAX:
                    raise ControlError(f"the daemon's answer exceeds {RESPONSE_BYTES_MAX} bytes")
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ControlError(f"cannot reach the daemon at {path}: {reason}") from exc
    return decode_response(b"".join(chunks))
