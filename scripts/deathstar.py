#!/usr/bin/env python3
"""The Star Wars deathstar API of the 2017 Cilium demo, for the lab.

HTTP/1.1 with keep-alive, IPv4 and IPv6 on one socket. Every request is
logged as one JSON line (method, path, headers of interest, body length) so
tests can check exactly what reached the server.
"""
import argparse
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEATHSTAR = """{
  "name": "Death Star",
  "model": "DS-1 Orbital Battle Station",
  "manufacturer": "Imperial Department of Military Research, Sienar Fleet Systems",
  "cost_in_credits": "1000000000000",
  "length": "120000",
  "crew": "342953",
  "passengers": "843342",
  "cargo_capacity": "1000000000000",
  "hyperdrive_rating": "4.0",
  "starship_class": "Deep Space Mobile Battlestation",
  "api": [
    "GET  /v1",
    "GET  /v1/healthz",
    "POST /v1/request-landing",
    "PUT  /v1/cargobay",
    "GET  /v1/hyper-matter-reactor/status",
    "PUT  /v1/exhaust-port"
  ]
}
"""

PANIC = """Panic: deathstar exploded

goroutine 1 [running]:
main.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)
        /code/src/github.com/empire/deathstar/
        temp/main.go:9 +0x64
main.main()
        /code/src/github.com/empire/deathstar/
        temp/main.go:5 +0x85
"""

LOG_LOCK = threading.Lock()
LOG = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def version_string(self):
        return "deathstar"

    def log_message(self, fmt, *args):  # the JSON log below replaces it
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def _reply(self, code, body, ctype="text/plain"):
        raw = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self):
        body = self._body()
        route = (self.command, self.path)
        if route == ("GET", "/v1/") or route == ("GET", "/v1"):
            code, text = 200, DEATHSTAR
        elif route == ("GET", "/v1/healthz"):
            code, text = 200, "OK\n"
        elif route == ("POST", "/v1/request-landing"):
            code, text = 200, "Ship landed\n"
        elif route == ("PUT", "/v1/exhaust-port"):
            code, text = 503, PANIC
        else:
            code, text = 404, "Not found\n"
        record = {
            "time": time.time(),
            "client": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "x_has_force": self.headers.get("X-Has-Force"),
            "body_len": len(body),
            "status": code,
        }
        with LOG_LOCK:
            LOG.write(json.dumps(record) + "\n")
            LOG.flush()
        self._reply(code, text)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--log", default="-")
    a = ap.parse_args()
    LOG = sys.stdout if a.log == "-" else open(a.log, "a", buffering=1)
    DualStackServer(("::", a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
