"""A lab back-end's servers, in one resident process (docs/lab.md, "Back-ends").

    python -m rainctl.lab.httpd --name NAME [--http-port 80] [--echo-port 9000]
                                [--agent-port 9777 --agent-file PATH]

- HTTP on every address (in DR mode requests arrive addressed to a VIP held on the back-end's
  loopback): `GET /` answers the back-end's name and a newline, `GET /bytes/N` answers N bytes
  (at most BYTES_MAX, generated as they are sent, for download tests); every answer carries
  the header `X-Backend: NAME`. HTTP/1.0, one thread per connection. `python -m http.server`
  would look up its own fully qualified name at start, which in a namespace without DNS costs
  seconds of resolver timeouts; this server does not.
- A TCP echo server: every byte received is sent back, for as long as the client keeps the
  connection open (long-lived connections, the connection-sync survival test). One thread
  per connection, never a process.
- With `--agent-file`: an agent for HAProxy's agent-check protocol on `--agent-port`: every
  connection gets the file's first line ("up", "drain", "down", "maint", "50%", ...; "up"
  while there is no file) and a newline, then the close. Writing the file changes what the
  back-end says.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import socket
import socketserver
import threading
from collections.abc import Sequence
from pathlib import Path

BYTES_MAX = 1 << 30
CHUNK = 64 * 1024
_ZEROS = b"\0" * CHUNK


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend_name = ""

    def server_bind(self) -> None:
        # No getfqdn(): the reverse lookup of http.server would time out without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        name = self.server.backend_name
        if self.path == "/":
            self._answer(200, f"{name}\n".encode())
            return
        prefix, _, count = self.path.partition("/bytes/")
        if prefix == "" and count.isdigit() and int(count) <= BYTES_MAX:
            size = int(count)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Backend", name)
            self.end_headers()
            while size > 0:
                self.wfile.write(_ZEROS[: min(size, CHUNK)])
                size -= CHUNK
            return
        self._answer(404, b"not found\n")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.backend_name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # thousands of requests per test: no log line each


class _EchoHandler(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            try:
                self.request.sendall(data)
            except OSError:
                return


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Hundreds of clients connect at once in the many-connections test: the default backlog
    # of 5 would make most of them wait for a SYN retransmission.
    request_queue_size = 1024


class _AgentServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    agent_file = Path()


class _AgentHandler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _AgentServer

    def handle(self) -> None:
        try:
            text = self.server.agent_file.read_text(encoding="ascii").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError):
            text = "up"
        with contextlib.suppress(OSError):
            self.request.sendall(f"{text.strip()}\n".encode("ascii", "replace"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rainctl.lab.httpd", description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--http-port", type=int, default=80)
    parser.add_argument("--echo-port", type=int, default=9000)
    parser.add_argument("--agent-port", type=int, default=9777)
    parser.add_argument("--agent-file", type=Path)
    arguments = parser.parse_args(argv)
    if arguments.agent_file is not None:
        agent = _AgentServer(("0.0.0.0", arguments.agent_port), _AgentHandler)  # noqa: S104
        agent.agent_file = arguments.agent_file
        threading.Thread(target=agent.serve_forever, name="agent", daemon=True).start()
    echo = _EchoServer(("0.0.0.0", arguments.echo_port), _EchoHandler)  # noqa: S104 - VIPs on lo
    threading.Thread(target=echo.serve_forever, name="echo", daemon=True).start()
    with _Server(("0.0.0.0", arguments.http_port), _Handler) as server:  # noqa: S104
        server.backend_name = arguments.name
        server.serve_forever()


if __name__ == "__main__":
    main()
