"""Helpers for the Herald interop suite: running the real binary, and small
HTTP / WebSocket client utilities with a timeout on every blocking call.

Nothing here talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Seconds to wait for the ready file after spawning the server.
READY_TIMEOUT = float(os.environ.get("HERALD_E2E_READY_TIMEOUT", "20"))
#: Seconds to wait for the server to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT = float(os.environ.get("HERALD_E2E_STOP_TIMEOUT", "10"))
#: Default timeout for a single HTTP request or WebSocket receive.
IO_TIMEOUT = 5.0
#: How long a "nothing must arrive" check listens.
QUIET_PERIOD = 0.5


class HeraldStartError(RuntimeError):
    """The server died or never wrote its ready file."""


def herald_bin() -> Path:
    """The binary under test: $HERALD_BIN, else <target>/debug/herald."""
    env = os.environ.get("HERALD_BIN")
    if env:
        return Path(env).resolve()
    target = os.environ.get("CARGO_TARGET_DIR") or str(REPO_ROOT / "target")
    return (Path(target) / "debug" / "herald").resolve()


def clean_env() -> dict[str, str]:
    """The environment for a herald process: ours minus anything the server
    reads as configuration (HERALD_*, JWT_SECRET), so the command line alone
    decides how it runs."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HERALD_") and k != "JWT_SECRET"
    }


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no output>"
    text = data[-limit:].decode("utf-8", "replace")
    return text if text.strip() else "<empty>"


class HeraldServer:
    """One `herald serve` process on ephemeral 127.0.0.1 ports.

    The data directory survives `restart()` / `kill9()` + `start()`; listener
    ports may change on every start, so re-read the URL attributes after one.
    """

    def __init__(
        self,
        binary: Path,
        extra_args: Iterable[str] = (),
        *,
        icepeak: bool = True,
        http: bool = True,
        metrics: bool = True,
        env: Optional[dict[str, str]] = None,
    ) -> None:
        self.binary = binary
        self.extra_args = list(extra_args)
        self.listeners = {"icepeak": icepeak, "http": http, "metrics": metrics}
        self.env = clean_env()
        self.env.setdefault("RUST_BACKTRACE", "1")
        if env:
            self.env.update(env)
        self.workdir = Path(tempfile.mkdtemp(prefix="herald-e2e-"))
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        self.last_exit_code: Optional[int] = None
        self.ready: dict[str, str] = {}
        self.icepeak_url: Optional[str] = None
        self.icepeak_ws: Optional[str] = None
        self.http_url: Optional[str] = None
        self.metrics_url: Optional[str] = None

    # ----------------------------------------------------------- lifecycle
    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.stdout"

    def command(self, ready_file: Path) -> list[str]:
        cmd = [str(self.binary), "serve", "--data-dir", str(self.data_dir)]
        for name, on in self.listeners.items():
            cmd += [f"--{name}", "127.0.0.1:0" if on else "off"]
        # The hpfeeds broker is on by default on 127.0.0.1:10000; keep it off
        # unless a test asks for it (e.g. `--hpfeeds 127.0.0.1:0`).
        if not any(a == "--hpfeeds" or a.startswith("--hpfeeds=") for a in self.extra_args):
            cmd += ["--hpfeeds", "off"]
        # The same for the MQTT broker (default 127.0.0.1:1883): `--mqtt 127.0.0.1:0`.
        if not any(a == "--mqtt" or a.startswith("--mqtt=") for a in self.extra_args):
            cmd += ["--mqtt", "off"]
        cmd += ["--ready-file", str(ready_file)]
        return cmd + self.extra_args

    def start(self) -> "HeraldServer":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("herald is already running")
        self.starts += 1
        ready_file = self.workdir / f"ready-{self.starts}.json"
        cmd = self.command(ready_file)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            code = self.proc.poll()
            if code is not None:
                self.last_exit_code = code
                raise HeraldStartError(
                    f"herald exited with code {code} before writing its ready file\n"
                    f"command: {' '.join(cmd)}\n--- stderr ---\n{_tail(self.stderr_path)}"
                )
            if ready_file.exists():
                try:
                    ready = json.loads(ready_file.read_text())
                except (OSError, ValueError):
                    ready = None  # not written completely yet; try again
                if isinstance(ready, dict):
                    self._apply_ready(ready)
                    return self
            if time.monotonic() > deadline:
                self._force_stop()
                raise HeraldStartError(
                    f"herald did not write {ready_file} within {READY_TIMEOUT:.0f}s\n"
                    f"command: {' '.join(cmd)}\n--- stderr ---\n{_tail(self.stderr_path)}"
                )
            time.sleep(0.05)

    def _apply_ready(self, ready: dict[str, Any]) -> None:
        for name, on in self.listeners.items():
            if on and not ready.get(name):
                self._force_stop()
                raise HeraldStartError(f"ready file {ready!r} lacks the {name!r} listener")
        self.ready = {k: str(v) for k, v in ready.items()}
        ice = self.ready.get("icepeak")
        self.icepeak_url = f"http://{ice}" if ice else None
        self.icepeak_ws = f"ws://{ice}" if ice else None
        http = self.ready.get("http")
        self.http_url = f"http://{http}" if http else None
        met = self.ready.get("metrics")
        self.metrics_url = f"http://{met}" if met else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> Optional[int]:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code
        (negative = killed by that signal), or None when it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.last_exit_code = self.proc.returncode
        self.proc = None
        return self.last_exit_code

    def _force_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.proc = None

    def restart(self) -> "HeraldServer":
        """Graceful stop (SIGTERM) and start again on the same data dir."""
        self.stop()
        return self.start()

    def kill9(self) -> None:
        """SIGKILL the server (a crash); call `start()` to bring it back."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
            self.last_exit_code = self.proc.returncode
        self.proc = None

    def close(self, keep: bool = False) -> None:
        """Stop the server and remove its temporary directory."""
        try:
            self.stop()
        finally:
            if not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self) -> str:
        parts = []
        for n in range(1, self.starts + 1):
            err = self.workdir / f"server-{n}.stderr"
            parts.append(f"--- start #{n} stderr ({err}) ---\n{_tail(err)}")
        return "\n".join(parts)

    # ------------------------------------------------------------- helpers
    def ip(self, path: str = "", **query: Any) -> str:
        """URL on the Icepeak listener for a document path like 'a/b'."""
        assert self.icepeak_url, "icepeak listener is off"
        return _url(self.icepeak_url, path, query)

    def ws(self, path: str = "", **query: Any) -> str:
        assert self.icepeak_ws, "icepeak listener is off"
        return _url(self.icepeak_ws, path, query)

    def docs(self, path: str = "") -> str:
        """URL of a document path on the main API (/docs/{path})."""
        assert self.http_url, "http listener is off"
        return f"{self.http_url}/docs/{path.strip('/')}"

    def metrics(self, path: str = "metrics") -> str:
        assert self.metrics_url, "metrics listener is off"
        return f"{self.metrics_url}/{path.lstrip('/')}"


def _url(base: str, path: str, query: dict[str, Any]) -> str:
    url = f"{base}/{path.strip('/')}"
    if query:
        parts = [k if v is True else f"{k}={v}" for k, v in query.items()]
        url += "?" + "&".join(parts)
    return url


# ------------------------------------------------------------------ HTTP
_session = requests.Session()
_session.trust_env = False  # never route loopback traffic through a proxy


def request(method: str, url: str, **kw: Any) -> requests.Response:
    kw.setdefault("timeout", IO_TIMEOUT)
    return _session.request(method, url, **kw)


def get(url: str, **kw: Any) -> requests.Response:
    return request("GET", url, **kw)


def put(url: str, value: Any, **kw: Any) -> requests.Response:
    """PUT a JSON value as the upstream tests do: `json.dumps` body, no
    Content-Type header."""
    return request("PUT", url, data=json.dumps(value), **kw)


def delete(url: str, **kw: Any) -> requests.Response:
    return request("DELETE", url, **kw)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------- WebSocket
def run(coro: Any, timeout: float = 60.0) -> Any:
    """Run an async test body with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def ws_connect(url: str, **kw: Any) -> ClientConnection:
    kw.setdefault("open_timeout", IO_TIMEOUT)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("proxy", None)
    return await connect(url, **kw)


async def recv_text(ws: ClientConnection, timeout: float = IO_TIMEOUT) -> str:
    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no WebSocket message within {timeout}s") from None
    assert isinstance(msg, str), f"expected a text frame, got binary {msg!r}"
    return msg


async def recv_json(ws: ClientConnection, timeout: float = IO_TIMEOUT) -> Any:
    return json.loads(await recv_text(ws, timeout))


async def assert_quiet(ws: ClientConnection, timeout: float = QUIET_PERIOD) -> None:
    """Nothing may arrive on `ws` for `timeout` seconds."""
    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"expected no message, received {msg!r}")


async def expect_close(ws: ClientConnection, timeout: float = IO_TIMEOUT) -> Optional[int]:
    """Wait until the server closes `ws`; returns the close code it sent
    (None when the TCP connection dropped without a close frame). Any data
    frame that arrives first fails the test."""
    try:
        msg = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except asyncio.TimeoutError:
        raise AssertionError(f"server did not close the WebSocket within {timeout}s") from None
    raise AssertionError(f"expected the server to close the WebSocket, received {msg!r}")


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed RSA certificate for 127.0.0.1 and localhost (PKCS#8 key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS tests need the `openssl` command to make a certificate")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    out = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60,
    )
    if out.returncode != 0:
        pytest.skip(f"openssl cannot make a certificate: {out.stderr.strip()}")
    return cert, key
