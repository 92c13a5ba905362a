"""The back-ends' HTTP server: `python -m rainctl.lab.httpd ADDRESS PORT DIRECTORY`.

`python -m http.server` would do, except that it looks up its own fully qualified name at
start; in a back-end namespace (no DNS server reachable) that costs seconds of resolver
timeouts per back-end. This server skips the lookup and otherwise serves DIRECTORY the same
way, one thread per connection.
"""

from __future__ import annotations

import functools
import http.server
import socketserver
import sys


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])


def main(argv: list[str]) -> None:
    address, port, directory = argv
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    with Server((address, int(port)), handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
