"""An HTTP proxy for the test fleet's apt: GET and HEAD to the allowed hosts only.

    python3 apt_proxy.py ADDRESS PORT ALLOWED_HOST...

The fleet's hosts have no route out (their only link is the host's bridge); this proxy on the
bridge gives apt Debian's archive and nothing else: other hosts and CONNECT (HTTPS, e.g. PyPI)
get 403. Every request is logged on stdout with the decision. Standard library only: fleet.sh
runs it with the system Python.
"""

from __future__ import annotations

import http.client
import shutil
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
}


class Handler(BaseHTTPRequestHandler):
    allowed: frozenset[str] = frozenset()

    def _refuse(self, why: str) -> None:
        print(f"DENY {self.command} {self.path} ({why})", flush=True)
        self.send_error(403, f"apt_proxy: {why}")

    def do_CONNECT(self) -> None:
        self._refuse("no tunnels")

    def do_HEAD(self) -> None:
        self._forward()

    def do_GET(self) -> None:
        self._forward()

    def _forward(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in self.allowed:
            self._refuse(f"host {url.hostname} not allowed")
            return
        path = url.path + (f"?{url.query}" if url.query else "")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            upstream.request(self.command, path or "/", headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(response, self.wfile)
            print(f"ALLOW {self.command} {self.path} {response.status}", flush=True)
        except OSError as exc:
            print(f"FAIL {self.command} {self.path} {exc}", flush=True)
        finally:
            upstream.close()

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request is printed above


def main() -> None:
    address, port, *allowed = sys.argv[1:]
    Handler.allowed = frozenset(allowed)
    server = ThreadingHTTPServer((address, int(port)), Handler)
    server.daemon_threads = True
    print(f"apt_proxy on {address}:{port} for {' '.join(allowed)}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
