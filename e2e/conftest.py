"""Fixtures for the Herald interop suite.

* ``herald``         – a fresh server with every listener on ephemeral ports.
* ``herald_factory`` – start servers with extra CLI args, e.g.
  ``herald_factory("--enable-jwt-auth", "--jwt-secret", "s3cret")``.
* ``herald_bin``     – path of the binary under test ($HERALD_BIN or
  target/debug/herald).

Every server gets its own temporary data dir, which is removed afterwards
(set HERALD_E2E_KEEP=1 to keep it). When a test fails, the stderr of the
servers it started is attached to the report.

Each test also has a hard deadline (HERALD_E2E_TEST_TIMEOUT, default 120 s) so
that a misbehaving server can never hang the suite.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from herald_e2e import HeraldServer, herald_bin as _herald_bin

TEST_TIMEOUT = float(os.environ.get("HERALD_E2E_TEST_TIMEOUT", "120"))
KEEP = os.environ.get("HERALD_E2E_KEEP", "") not in ("", "0")


@pytest.fixture(scope="session")
def herald_bin() -> Path:
    path = _herald_bin()
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"herald binary not found at {path}; run `cargo build -p herald` "
            "or set HERALD_BIN",
            pytrace=False,
        )
    return path


@pytest.fixture
def herald_factory(
    request: pytest.FixtureRequest, herald_bin: Path
) -> Iterator[Callable[..., HeraldServer]]:
    servers: list[HeraldServer] = []
    request.node._herald_servers = servers

    def start(*extra_args: str, **kw) -> HeraldServer:
        server = HeraldServer(herald_bin, extra_args, **kw)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close(keep=KEEP)


@pytest.fixture
def herald(herald_factory: Callable[..., HeraldServer]) -> HeraldServer:
    return herald_factory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        for n, server in enumerate(getattr(item, "_herald_servers", []), 1):
            report.sections.append((f"herald server {n} ({server.workdir})", server.logs()))


class HeraldTestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """A hard per-test deadline via SIGALRM (main thread, POSIX only)."""
    if TEST_TIMEOUT <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise HeraldTestTimeout(f"test exceeded {TEST_TIMEOUT:.0f}s (HERALD_E2E_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
