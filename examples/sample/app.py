#!/usr/bin/env python3
"""Ketch's sample application: a small shop of four HTTP services and a load generator.

Standard library only, so it runs as a plain process in a pod (Ketch runs commands, it does
not pull images). One file, one role per process:

    app.py frontend   GET /  -> calls catalog and reviews, returns a JSON page
    app.py catalog    GET /items
    app.py reviews    GET /reviews  (VERSION=v1: plain; VERSION=v2: also calls ratings)
    app.py ratings    GET /ratings
    app.py loadgen    calls the frontend forever, one new connection per request, and serves
                      its counters on GET /stats (JSON) so you can see failures at a glance;
                      failures before the first success (the app still starting) are counted
                      apart, as `warmup_failed`

Every server also answers GET /healthz (readiness) and listens on $PORT (default 8080).
Services are found by DNS name (`catalog`, `reviews`, ... through the pod's search path).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = int(os.environ.get("PORT", "8080"))
VERSION = os.environ.get("VERSION", "v1")
POD = os.environ.get("HOSTNAME", socket.gethostname())
TIMEOUT = float(os.environ.get("TIMEOUT", "3"))


def call(host: str, path: str, port: int = 8080) -> tuple[int, Any]:
    """GET http://host:port/path on a new connection; (status, decoded JSON or error text)."""
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body.decode(errors="replace")
    finally:
        conn.close()


def frontend() -> dict[str, Any]:
    items = call("catalog", "/items")
    reviews = call("reviews", "/reviews")
    return {"page": "shop", "served_by": POD, "catalog": items[1], "reviews": reviews[1]}


def catalog() -> dict[str, Any]:
    return {"served_by": POD, "items": ["kettle", "teapot", "ketch"]}


def reviews() -> dict[str, Any]:
    body: dict[str, Any] = {"served_by": POD, "version": VERSION, "reviews": ["sturdy", "fast"]}
    if VERSION != "v1":
        status, ratings = call("ratings", "/ratings")
        body["ratings"] = ratings if status == 200 else {"error": status}
    return body


def ratings() -> dict[str, Any]:
    return {"served_by": POD, "stars": [5, 4]}


ROUTES = {
    "frontend": {"/": frontend},
    "catalog": {"/items": catalog},
    "reviews": {"/reviews": reviews},
    "ratings": {"/ratings": ratings},
}


class LoadStats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.warmup_failed = 0
        self.last_error = ""
        self.versions: dict[str, int] = {}

    def fail(self, error: str) -> None:
        """Count a failure (the caller holds the lock)."""
        if self.ok == 0:
            self.warmup_failed += 1
        else:
            self.failed += 1
        self.last_error = error

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ok": self.ok,
                "failed": self.failed,
                "warmup_failed": self.warmup_failed,
                "last_error": self.last_error,
                "reviews_versions": dict(self.versions),
            }


STATS = LoadStats()


def loadgen(target: str, interval: float) -> None:
    last_print = time.monotonic()
    while True:
        try:
            status, body = call(target, "/")
            version = body.get("reviews", {}).get("version", "?") if isinstance(body, dict) else "?"
            with STATS.lock:
                if status == 200:
                    STATS.ok += 1
                    STATS.versions[version] = STATS.versions.get(version, 0) + 1
                else:
                    STATS.fail(f"HTTP {status}")
        except (OSError, http.client.HTTPException) as exc:
            with STATS.lock:
                STATS.fail(f"{type(exc).__name__}: {exc}")
        now = time.monotonic()
        if now - last_print >= 5:
            print(json.dumps(STATS.snapshot()), flush=True)
            last_print = now
        time.sleep(interval)


def make_handler(role: str) -> type[BaseHTTPRequestHandler]:
    routes = ROUTES.get(role, {})

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self.reply(200, {"ok": True})
            elif role == "loadgen" and path == "/stats":
                self.reply(200, STATS.snapshot())
            elif path in routes:
                try:
                    self.reply(200, routes[path]())
                except (OSError, http.client.HTTPException) as exc:
                    self.reply(502, {"error": f"{type(exc).__name__}: {exc}", "served_by": POD})
            else:
                self.reply(404, {"error": f"no route {path}"})

        def reply(self, status: int, body: Any) -> None:
            data = (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            sys.stdout.write(f"{self.address_string()} {format % args}\n")
            sys.stdout.flush()

    return Handler


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in (*ROUTES, "loadgen"):
        print(f"usage: app.py {{{'|'.join((*ROUTES, 'loadgen'))}}}", file=sys.stderr)
        return 2
    role = argv[1]
    if role == "loadgen":
        target = os.environ.get("TARGET", "frontend")
        interval = float(os.environ.get("INTERVAL", "0.2"))
        threading.Thread(target=loadgen, args=(target, interval), daemon=True).start()
    server = ThreadingHTTPServer(("", PORT), make_handler(role))
    server.daemon_threads = True
    print(f"{role} {VERSION} listening on :{PORT} as {POD}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
