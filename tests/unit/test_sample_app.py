"""The sample app `ketch up` deploys (examples/sample/app.py): its routes answer over real
HTTP on loopback, and the load generator counts start-up failures apart from later ones."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "sample" / "app.py"


@pytest.fixture(scope="module")
def app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ketch_sample_app", APP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def catalog(app: ModuleType) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), app.make_handler("catalog"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_catalog_answers_items_health_and_404(app: ModuleType, catalog: int) -> None:
    status, body = app.call("127.0.0.1", "/items", catalog)
    assert status == 200
    assert body["items"] == ["kettle", "teapot", "ketch"]
    assert app.call("127.0.0.1", "/healthz", catalog) == (200, {"ok": True})
    status, body = app.call("127.0.0.1", "/reviews", catalog)
    assert status == 404
    assert body == {"error": "no route /reviews"}


def test_load_generator_counts_warm_up_failures_apart(app: ModuleType) -> None:
    stats = app.LoadStats()
    with stats.lock:
        stats.fail("ConnectionRefusedError")
        stats.fail("ConnectionRefusedError")
        stats.ok += 1
        stats.fail("TimeoutError: timed out")
    snap = stats.snapshot()
    assert (snap["warmup_failed"], snap["failed"], snap["ok"]) == (2, 1, 1)
    assert snap["last_error"] == "TimeoutError: timed out"
