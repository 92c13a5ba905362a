"""A client for user-mode-linux's management console (mconsole), in place of `uml_mconsole`.

UML listens on a datagram socket at `<uml_dir>/<umid>/mconsole` and answers each request to
the sender's address. `uml_mconsole` sends from an abstract socket, and abstract names are
per network namespace, so from outside the node's namespace the answer never arrives and the
tool hangs (LAB.md pitfall 2). This client binds a filesystem socket next to UML's instead:
filesystem names are visible from every namespace, so it works from anywhere, with a timeout,
and the lab needs no uml-utilities package (whose init script starts a uml_switch daemon).

Wire format (arch/um/include/shared/mconsole.h, native byte order): request = magic
0xcafebabe, version 2, length, 512 data bytes; reply = error flag, "more" flag, length, 512
data bytes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xCAFEBABE
VERSION = 2
DATA_MAX = 512
_HEADER = struct.Struct("=III")
_REQUEST = struct.Struct(f"=III{DATA_MAX}s")


class MconsoleError(Exception):
    """The node did not answer, answered garbage, or refused the command."""


@dataclass(frozen=True, slots=True)
class Reply:
    error: bool
    more: bool
    text: str


def encode_request(command: str) -> bytes:
    data = command.encode("ascii")
    if not data or len(data) >= DATA_MAX:
        raise ValueError(f"mconsole command must be 1..{DATA_MAX - 1} bytes: {command!r}")
    return _REQUEST.pack(MAGIC, VERSION, len(data), data)


def decode_reply(datagram: bytes) -> Reply:
    if len(datagram) < _HEADER.size:
        raise MconsoleError(f"short mconsole reply ({len(datagram)} bytes)")
    error, more, length = _HEADER.unpack_from(datagram)
    if length > min(DATA_MAX, len(datagram) - _HEADER.size):
        raise MconsoleError(f"mconsole reply length {length} exceeds the datagram")
    text = datagram[_HEADER.size : _HEADER.size + length].split(b"\0", 1)[0]
    return Reply(bool(error), bool(more), text.decode("utf-8", errors="replace"))


def command(socket_path: Path, line: str, *, timeout_s: float) -> str:
    """Send one mconsole command (`stop`, `go`, `version`, `halt`...) and return the answer.

    Raises MconsoleError when UML does not answer within `timeout_s` or reports an error.
    """
    request = encode_request(line)
    client_path = socket_path.parent.parent / f".mconsole-client-{os.getpid()}"
    client_path.unlink(missing_ok=True)
    parts = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        try:
            client.bind(str(client_path))
            client.settimeout(timeout_s)
            client.sendto(request, str(socket_path))
            while True:
                reply = decode_reply(client.recv(_HEADER.size + DATA_MAX))
                if reply.error:
                    raise MconsoleError(f"mconsole {line!r}: {reply.text or 'error'}")
                parts.append(reply.text)
                if not reply.more:
                    break
        except TimeoutError as exc:
            raise MconsoleError(f"mconsole {line!r}: no answer in {timeout_s:g} s") from exc
        except OSError as exc:
            raise MconsoleError(f"mconsole {line!r} via {socket_path}: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                client_path.unlink()
    return "".join(parts)
