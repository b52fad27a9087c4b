"""hpfeeds interop: Herald's hpfeeds broker (`--hpfeeds`) driven by the real
PyPI `hpfeeds` client (3.1.0; blocking `hpfeeds.new(...)` and asyncio
`ClientSession`), plus raw frames built with `hpfeeds.protocol` for what the
client cannot send.

Contract: shared/seed-contracts.md section 3 (3.1 wire, 3.2 broker behaviour
and exact error texts, 3.4 metric names, 3.5 the Python client), and the
choices documented in crates/herald-transport-hpfeeds/src/broker.rs.

Identities are added offline with `herald hpfeeds add` on the data directory
before the server starts; one more comes from the `env` backend
(`HPFEEDS_<IDENT>_SECRET`, ...). Channel `c` is the IorioDB stream
`hpfeeds:c`, which the cross-protocol tests read and write as user admin.

The blocking client reconnects forever by default (sleeping 20 s); every
client here passes `reconnect=False`. Its `wait()` and `_read_message()` read
one socket chunk and return the first frame in it, so tests that read several
frames use `next_frame()`, which drains the client's own `Unpacker` first.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import hpfeeds
import pytest
import requests
import sseclient  # sseclient-py
from hpfeeds.asyncio import ClientSession
from hpfeeds.protocol import (
    BUFSIZ,
    OP_ERROR,
    OP_INFO,
    OP_PUBLISH,
    OP_SUBSCRIBE,
    Unpacker,
    msgauth,
    msghdr,
    msgpublish,
    msgsubscribe,
    readerror,
    readinfo,
    readpublish,
)

from herald_e2e import IO_TIMEOUT, QUIET_PERIOD, HeraldServer, clean_env, make_cert
from iorio_client import Connection, Subscriptions

# hpfeeds 3.1.0's client still calls the deprecated `logger.warn`.
pytestmark = pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")

ADMIN_PASSWORD = "herald-e2e-admin-password"
LONG_POLL_TIMEOUT = 2

#: ident -> (secret, pubchans, subchans), added with `herald hpfeeds add`.
IDENTITIES = {
    "sensor": ("sensor-secret", ["events", "sync-sensor"], ["events", "sync-sensor"]),
    "reader": ("reader-secret", ["sync-reader"], ["events", "sync-reader"]),
    "limited": ("limited-secret", ["other"], ["other"]),
}
#: One identity from the `env` backend.
ENV_IDENTITY = {
    "HPFEEDS_ENVUSER_SECRET": "env-secret",
    "HPFEEDS_ENVUSER_PUBCHANS": "events",
    "HPFEEDS_ENVUSER_SUBCHANS": "events,sync-envuser",
    "HPFEEDS_ENVUSER_OWNER": "env-owner",
}


# =====================================================================
# fixtures and helpers
# =====================================================================
def add_identity(binary: Path, data_dir: Path, ident: str, secret: str, pubs: list[str], subs: list[str]) -> None:
    cmd = [str(binary), "hpfeeds", "add", ident, "--secret-stdin", "--data-dir", str(data_dir)]
    if pubs:
        cmd += ["--pubchans", ",".join(pubs)]
    if subs:
        cmd += ["--subchans", ",".join(subs)]
    out = subprocess.run(
        cmd, input=secret + "\n", capture_output=True, text=True, env=clean_env(), timeout=30
    )
    assert out.returncode == 0, f"herald hpfeeds add {ident}: {out.stdout}{out.stderr}"


@pytest.fixture
def hp_server(request: pytest.FixtureRequest, herald_bin: Path) -> Iterator[HeraldServer]:
    """A server with the hpfeeds broker on an ephemeral port, the identities of
    IDENTITIES added offline before it starts, the env identity `envuser`, and
    user admin (HERALD_ADMIN_PASSWORD) for the IorioDB side."""
    env = {"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD, **ENV_IDENTITY}
    server = HeraldServer(
        herald_bin,
        ["--hpfeeds", "127.0.0.1:0", "--long-poll-timeout", str(LONG_POLL_TIMEOUT)],
        icepeak=False,
        env=env,
    )
    request.node._herald_servers = [server]
    try:
        for ident, (secret, pubs, subs) in IDENTITIES.items():
            add_identity(herald_bin, server.data_dir, ident, secret, pubs, subs)
        server.start()
        assert "hpfeeds" in server.ready, server.ready
        yield server
    finally:
        server.close()


def address(server: HeraldServer) -> tuple[str, int]:
    host, port = server.ready["hpfeeds"].rsplit(":", 1)
    return host, int(port)


def client(server: HeraldServer, ident: str, secret: Optional[str] = None) -> hpfeeds.client.Client:
    """The blocking PyPI client, connected and authenticated (AUTH sent)."""
    if secret is None:
        secret = IDENTITIES[ident][0]
    host, port = address(server)
    return hpfeeds.new(host, port, ident, secret, reconnect=False)


def next_frame(c: hpfeeds.client.Client, timeout: float = IO_TIMEOUT) -> Optional[tuple[int, bytes]]:
    """The next `(opcode, data)` the client receives, or None when the broker
    closed the connection."""
    deadline = time.monotonic() + timeout
    while True:
        for opcode, data in c.unpacker:
            return opcode, data
        left = deadline - time.monotonic()
        assert left > 0, f"no hpfeeds frame within {timeout}s"
        c.s.settimeout(left)
        try:
            chunk = c.s.recv(BUFSIZ)
        except socket.timeout:
            continue
        except ConnectionError:
            return None
        if not chunk:
            return None
        c.unpacker.feed(chunk)


def next_publish(c: hpfeeds.client.Client, timeout: float = IO_TIMEOUT) -> tuple[str, str, bytes]:
    frame = next_frame(c, timeout)
    assert frame is not None, "connection closed while waiting for OP_PUBLISH"
    opcode, data = frame
    assert opcode == OP_PUBLISH, f"expected OP_PUBLISH, got opcode {opcode}: {data!r}"
    return readpublish(data)


def assert_quiet(c: hpfeeds.client.Client, period: float = QUIET_PERIOD) -> None:
    for opcode, data in c.unpacker:
        raise AssertionError(f"expected nothing, got opcode {opcode}: {data!r}")
    c.s.settimeout(period)
    try:
        chunk = c.s.recv(BUFSIZ)
    except socket.timeout:
        return
    raise AssertionError(f"expected nothing, received {chunk!r}")


def assert_closed(c: hpfeeds.client.Client) -> None:
    """The broker closes the connection (after an error)."""
    frame = next_frame(c)
    assert frame is None, f"expected the connection to be closed, got {frame!r}"


def subscribe_synced(c: hpfeeds.client.Client, *chans: str) -> None:
    """Subscribes with the client (`subscribe()` + `_subscribe()`) and waits
    until the broker has processed it: a marker published on the identity's
    own `sync-<ident>` channel after the subscriptions comes back."""
    sync = f"sync-{c.ident}"
    for chan in (*chans, sync):
        c.subscribe(chan)
    c._subscribe()
    marker = f"marker-{time.monotonic_ns()}".encode()
    c.publish(sync, marker)
    while True:
        _, chan, payload = next_publish(c)
        if chan == sync and payload == marker:
            return


def admin(server: HeraldServer) -> Connection:
    conn = Connection(server.http_url)
    resp = conn.authenticate("admin", ADMIN_PASSWORD)
    assert resp.status_code == 201, f"login admin: {resp.status_code} {resp.text!r}"
    return conn


def long_poll_until(conn: Connection, subs: Subscriptions, done: Callable[[list[dict]], bool]) -> list[dict]:
    got: list[dict] = []
    deadline = time.monotonic() + 10
    while not done(got):
        assert time.monotonic() < deadline, f"long-poll gave up with {got!r}"
        resp = conn.listen(subs, timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT)
        if resp.status_code == 204:
            continue
        assert resp.status_code == 200, f"{resp.status_code} {resp.text!r}"
        entries = resp.json()
        got += entries
        subs.update_seqnums(entries)
    return got


# =====================================================================
# publish / subscribe with the PyPI client
# =====================================================================
def test_info_names_the_broker(hp_server: HeraldServer):
    c = client(hp_server, "sensor")
    try:
        assert c.brokername == "hpfeeds"
    finally:
        c.close()


def test_publish_subscribe_with_run_callbacks(hp_server: HeraldServer):
    reader = client(hp_server, "reader")
    sensor = client(hp_server, "sensor")
    try:
        subscribe_synced(reader)  # only sync-reader yet: the run loop subscribes `events`
        received: "queue.Queue[tuple]" = queue.Queue()
        errors: "queue.Queue[str]" = queue.Queue()
        reader.subscribe("events")

        def run() -> None:
            try:
                reader.run(lambda *m: received.put(m), errors.put)
            except Exception as exc:  # noqa: BLE001 - reported through the queue
                errors.put(f"run raised {exc!r}")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # run() sends the subscriptions first; wait until they are in by
        # publishing markers until one arrives.
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            sensor.publish("events", b"ping")
            try:
                m = received.get(timeout=0.2)
                assert m == ("sensor", "events", b"ping"), m
                break
            except queue.Empty:
                assert time.monotonic() < deadline, "the run loop never received anything"
        while True:  # drop the extra pings
            try:
                received.get(timeout=QUIET_PERIOD)
            except queue.Empty:
                break
        payloads = [f"message {i}".encode() for i in range(20)] + [b"\x00\xff binary", b""]
        for p in payloads:
            sensor.publish("events", p)
        got = [received.get(timeout=IO_TIMEOUT) for _ in payloads]
        assert got == [("sensor", "events", p) for p in payloads]
        assert errors.empty(), errors.get()
        reader.stop()
        reader.close()
        thread.join(IO_TIMEOUT)
    finally:
        reader.close()
        sensor.close()


def test_self_delivery_and_two_subscribers(hp_server: HeraldServer):
    sensor = client(hp_server, "sensor")
    reader = client(hp_server, "reader")
    env_user = client(hp_server, "envuser", "env-secret")
    try:
        subscribe_synced(sensor, "events")
        subscribe_synced(reader, "events")
        sensor.publish("events", b"from sensor")
        for c in (sensor, reader):
            assert next_publish(c) == ("sensor", "events", b"from sensor")
        # The env identity publishes too; the channel list of the env backend works.
        env_user.publish("events", b"from env")
        for c in (sensor, reader):
            assert next_publish(c) == ("envuser", "events", b"from env")
        assert_quiet(env_user)
    finally:
        for c in (sensor, reader, env_user):
            c.close()


def test_unsubscribe_stops_delivery(hp_server: HeraldServer):
    sensor = client(hp_server, "sensor")
    reader = client(hp_server, "reader")
    try:
        subscribe_synced(reader, "events")
        sensor.publish("events", b"one")
        assert next_publish(reader)[2] == b"one"
        reader.send(hpfeeds.protocol.msgunsubscribe("reader", "events"))
        reader.subscriptions.discard("events")
        subscribe_synced(reader)
        sensor.publish("events", b"two")
        assert_quiet(reader)
    finally:
        sensor.close()
        reader.close()


def test_asyncio_client_session(hp_server: HeraldServer):
    host, port = address(hp_server)

    async def scenario() -> None:
        async with ClientSession(host, port, "sensor", "sensor-secret") as c:
            c.subscribe("events")
            c.publish("events", b"async hello")
            got = await asyncio.wait_for(c.read(), IO_TIMEOUT)
            assert got == ("sensor", "events", b"async hello")

    asyncio.run(asyncio.wait_for(scenario(), 3 * IO_TIMEOUT))


# =====================================================================
# errors: exact texts, then the close
# =====================================================================
def test_wrong_secret(hp_server: HeraldServer):
    c = client(hp_server, "sensor", "not-the-secret")
    try:
        assert c.wait(IO_TIMEOUT) == "Authentication failed for sensor"
        assert_closed(c)
    finally:
        c.close()


def test_unknown_ident(hp_server: HeraldServer):
    c = client(hp_server, "nobody", "whatever")
    try:
        assert c.wait(IO_TIMEOUT) == "Authentication failed for nobody"
        assert_closed(c)
    finally:
        c.close()


def test_publish_not_allowed(hp_server: HeraldServer):
    c = client(hp_server, "limited")
    try:
        c.publish("events", b"x")
        assert c.wait(IO_TIMEOUT) == "Authkey not allowed to pub here. ident=limited, chan=events"
        assert_closed(c)
    finally:
        c.close()


def test_subscribe_not_allowed(hp_server: HeraldServer):
    c = client(hp_server, "limited")
    try:
        c.subscribe("events")
        c._subscribe()
        assert c.wait(IO_TIMEOUT) == "Authkey not allowed to sub here. ident=limited, chan=events"
        assert_closed(c)
    finally:
        c.close()


def test_publish_with_another_ident(hp_server: HeraldServer):
    c = client(hp_server, "limited")
    try:
        c.send(msgpublish("someone-else", "other", b"x"))
        assert c.wait(IO_TIMEOUT) == "Invalid authkey in message, ident=someone-else"
        assert_closed(c)
    finally:
        c.close()


def test_errors_reach_the_run_error_callback(hp_server: HeraldServer):
    c = client(hp_server, "limited")
    errors: list[str] = []

    def on_error(text: str) -> None:
        errors.append(text)
        c.stop()

    try:
        c.subscribe("events")
        thread = threading.Thread(target=c.run, args=(lambda *m: None, on_error), daemon=True)
        thread.start()
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive(), "run() did not end after the error"
        assert errors == ["Authkey not allowed to sub here. ident=limited, chan=events"]
    finally:
        c.close()


def test_first_message_must_be_auth(hp_server: HeraldServer):
    host, port = address(hp_server)
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as s:
        unpacker = Unpacker()

        def frame() -> Optional[tuple[int, bytes]]:
            while True:
                for op, data in unpacker:
                    return op, data
                chunk = s.recv(BUFSIZ)
                if not chunk:
                    return None
                unpacker.feed(chunk)

        op, data = frame()
        assert op == OP_INFO
        name, nonce = readinfo(data)
        assert name == "hpfeeds" and len(nonce) == 4
        s.sendall(msgsubscribe("sensor", "events"))
        op, data = frame()
        assert (op, readerror(data)) == (OP_ERROR, "First message was not AUTH")
        assert frame() is None

    # And a correct AUTH on a raw socket works: no reply, then publishes flow.
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as s:
        unpacker = Unpacker()
        op, data = frame()
        _, nonce = readinfo(data)
        s.sendall(msgauth(nonce, "sensor", "sensor-secret"))
        s.sendall(msgsubscribe("sensor", "events"))
        s.sendall(msgpublish("sensor", "events", b"raw"))
        op, data = frame()
        assert (op, readpublish(data)) == (OP_PUBLISH, ("sensor", "events", b"raw"))


def test_first_message_not_auth_is_judged_by_its_opcode(hp_server: HeraldServer):
    """The Python broker refuses a complete first frame whose opcode is not
    OP_AUTH before looking at its body: a body that would not even decode gets
    the same error."""
    for first in (
        msghdr(OP_SUBSCRIBE, b""),  # no ident length byte
        msghdr(OP_PUBLISH, b"\x06sensor\x09ev"),  # truncated channel
        msghdr(OP_ERROR, b"\xff\xfe"),  # not UTF-8
        msghdr(OP_INFO, b"\x02hp\x01"),  # a 1-byte nonce
    ):
        with socket.create_connection(address(hp_server), timeout=IO_TIMEOUT) as s:
            unpacker = Unpacker()

            def frame() -> Optional[tuple[int, bytes]]:
                while True:
                    for op, data in unpacker:
                        return op, data
                    try:
                        chunk = s.recv(BUFSIZ)
                    except ConnectionError:
                        return None
                    if not chunk:
                        return None
                    unpacker.feed(chunk)

            op, _ = frame()
            assert op == OP_INFO
            s.sendall(first)
            op, data = frame()
            assert (op, readerror(data)) == (OP_ERROR, "First message was not AUTH"), first
            assert frame() is None


# =====================================================================
# cross-protocol: hpfeeds channel `c` is the IorioDB stream hpfeeds:c
# =====================================================================
def test_hpfeeds_publish_seen_by_iorio_long_poll_and_sse(hp_server: HeraldServer):
    sensor = client(hp_server, "sensor")
    try:
        sensor.publish("events", b"hello iorio")
        sensor.publish("events", b"\x00\xff")
        conn = admin(hp_server)
        entries = long_poll_until(conn, Subscriptions().add("hpfeeds", "events", 1), lambda g: len(g) >= 2)
        first, second = entries[:2]
        assert first["meta"]["bucket"] == "hpfeeds" and first["meta"]["stream"] == "events", first
        assert first["meta"]["origin"] == "sensor", first
        assert first["meta"]["ct"] == "application/octet-stream", first
        assert first["data"] == "hello iorio", first
        assert second["meta"]["enc"] == "base64", second
        assert base64.b64decode(second["data"]) == b"\x00\xff", second

        # SSE, live: a publish after the stream opened arrives as an event.
        resp = conn.listen_sse(Subscriptions().add("hpfeeds", "events", 3), timeout=IO_TIMEOUT)
        try:
            assert resp.status_code == 200, resp.text
            sensor.publish("events", b"live over sse")
            for event in sseclient.SSEClient(resp).events():
                batch = json.loads(event.data)
                assert batch[0]["data"] == "live over sse", batch
                assert batch[0]["meta"]["origin"] == "sensor", batch
                break
        except requests.exceptions.RequestException as exc:
            raise AssertionError("no SSE event for the hpfeeds publish") from exc
        finally:
            resp.close()
    finally:
        sensor.close()


def test_iorio_event_reaches_hpfeeds_subscribers(hp_server: HeraldServer):
    reader = client(hp_server, "reader")
    try:
        subscribe_synced(reader, "events")
        conn = admin(hp_server)
        resp = conn.send("hpfeeds", "events", {"from": "iorio", "n": 1})
        assert resp.status_code == 201, resp.text
        ident, chan, payload = next_publish(reader)
        # Events written through another protocol carry no publisher ident: the
        # broker name stands in.
        assert (ident, chan) == ("hpfeeds", "events")
        assert json.loads(payload) == {"from": "iorio", "n": 1}
    finally:
        reader.close()


# =====================================================================
# metrics
# =====================================================================
def test_broker_metrics(hp_server: HeraldServer):
    sensor = client(hp_server, "sensor")
    bad = client(hp_server, "sensor", "wrong")
    try:
        subscribe_synced(sensor, "events")
        sensor.publish("events", b"x" * 3000)
        next_publish(sensor)
        assert bad.wait(IO_TIMEOUT) == "Authentication failed for sensor"
        deadline = time.monotonic() + IO_TIMEOUT
        wanted = [
            "hpfeeds_broker_client_connections",
            "hpfeeds_broker_connection_made",
            'hpfeeds_broker_connection_ready{ident="sensor"}',
            'hpfeeds_broker_connection_error{ident="sensor",category="invalid-secret"}',
            'hpfeeds_broker_receive_publish_count{ident="sensor",chan="events"}',
            'hpfeeds_broker_receive_publish_size_bucket{ident="sensor",chan="events",le="4096"}',
            'hpfeeds_broker_subscriptions{ident="sensor",chan="events"} 1',
            'hpfeeds_client_authenticated_connections{ident="sensor",owner="sensor"} 1',
            # The buffer metrics of authenticated connections (3.4).
            'hpfeeds_broker_connection_receive_buffer_fill{ident="sensor"}',
            'hpfeeds_broker_connection_send_buffer_fill{ident="sensor"}',
            'hpfeeds_broker_connection_send_buffer_drain{ident="sensor"}',
            'hpfeeds_broker_connection_send_buffer_size{ident="sensor"}',
            'hpfeeds_broker_connection_receive_buffer_size{ident="sensor"}',
        ]
        while True:
            text = requests.get(hp_server.metrics(), timeout=IO_TIMEOUT).text
            missing = [w for w in wanted if w not in text]
            if not missing:
                break
            assert time.monotonic() < deadline, f"missing {missing} in:\n{text}"
            time.sleep(0.05)
    finally:
        sensor.close()
        bad.close()


# =====================================================================
# TLS (--hpfeeds-tls-cert / --hpfeeds-tls-key), as the Python broker's
# `tls:` endpoint: the PyPI client's `certfile=` (blocking) and `ssl=`
# (asyncio) options, trusting a self-signed certificate made with openssl.
# =====================================================================
@pytest.fixture
def hp_tls_server(request: pytest.FixtureRequest, herald_bin: Path, tmp_path: Path) -> Iterator[tuple[HeraldServer, Path]]:
    """The hpfeeds broker speaking TLS with a fresh self-signed certificate;
    yields the server and the certificate file (the clients' trust anchor).
    The served files are tls/served.crt and tls/served.key under tmp_path."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert, key = make_cert(tls_dir, "first")
    served_cert, served_key = tls_dir / "served.crt", tls_dir / "served.key"
    shutil.copy(cert, served_cert)
    shutil.copy(key, served_key)
    server = HeraldServer(
        herald_bin,
        ["--hpfeeds", "127.0.0.1:0", "--hpfeeds-tls-cert", str(served_cert),
         "--hpfeeds-tls-key", str(served_key)],
        icepeak=False,
        env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    request.node._herald_servers = [server]
    try:
        for ident, (secret, pubs, subs) in IDENTITIES.items():
            add_identity(herald_bin, server.data_dir, ident, secret, pubs, subs)
        server.start()
        yield server, cert
    finally:
        server.close()


def served_certificate(server: HeraldServer) -> bytes:
    """The DER certificate the broker presents (not verified)."""
    host, port = address(server)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=IO_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_tls_blocking_client_with_certfile(hp_tls_server: tuple[HeraldServer, Path]):
    server, cert = hp_tls_server
    host, port = address(server)
    reader = hpfeeds.new(host, port, "reader", "reader-secret", reconnect=False, certfile=str(cert))
    sensor = hpfeeds.new(host, port, "sensor", "sensor-secret", reconnect=False, certfile=str(cert))
    try:
        assert reader.brokername == "hpfeeds"
        subscribe_synced(reader, "events")
        payloads = [f"tls {i}".encode() for i in range(20)] + [b"\x00\xff binary"]
        for p in payloads:
            sensor.publish("events", p)
        assert [next_publish(reader) for _ in payloads] == [("sensor", "events", p) for p in payloads]
        # Errors arrive over TLS too, then the close.
        sensor.send(msgsubscribe("sensor", "other"))
        frame = next_frame(sensor)
        assert frame is not None and frame[0] == OP_ERROR, frame
        assert readerror(frame[1]) == "Authkey not allowed to sub here. ident=sensor, chan=other"
        assert_closed(sensor)
    finally:
        reader.close()
        sensor.close()


def test_tls_asyncio_client_session(hp_tls_server: tuple[HeraldServer, Path]):
    server, cert = hp_tls_server
    host, port = address(server)
    context = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with ClientSession(host, port, "sensor", "sensor-secret", ssl=context) as c:
            c.subscribe("events")
            c.publish("events", b"async over tls")
            got = await asyncio.wait_for(c.read(), IO_TIMEOUT)
            assert got == ("sensor", "events", b"async over tls")

    asyncio.run(asyncio.wait_for(scenario(), 3 * IO_TIMEOUT))


def test_tls_listener_refuses_plain_hpfeeds(hp_tls_server: tuple[HeraldServer, Path]):
    server, _ = hp_tls_server
    with socket.create_connection(address(server), timeout=IO_TIMEOUT) as s:
        # A plain client waits for OP_INFO; a TLS server sends nothing first.
        s.settimeout(QUIET_PERIOD)
        with pytest.raises(socket.timeout):
            s.recv(BUFSIZ)
        # What it sends is not a TLS ClientHello: the broker closes, never answering in
        # hpfeeds.
        s.settimeout(IO_TIMEOUT)
        s.sendall(msgauth(b"\x00\x00\x00\x00", "sensor", "sensor-secret"))
        try:
            data = s.recv(BUFSIZ)
        except ConnectionError:
            data = b""
        assert not data.startswith(b"\x00\x00\x00"), data
    # The failed handshake is counted (Herald's metric; the Python broker has none).
    wanted = 'hpfeeds_broker_tls_handshake_error{category="failed"} 1'
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        text = requests.get(server.metrics(), timeout=IO_TIMEOUT).text
        if wanted in text:
            break
        assert time.monotonic() < deadline, f"missing {wanted} in:\n{text}"
        time.sleep(0.05)


def test_tls_certificate_reload(hp_tls_server: tuple[HeraldServer, Path], tmp_path: Path):
    server, first = hp_tls_server
    host, port = address(server)
    assert served_certificate(server) == pem_to_der(first)
    kept = hpfeeds.new(host, port, "sensor", "sensor-secret", reconnect=False, certfile=str(first))
    try:
        subscribe_synced(kept)
        tls_dir = tmp_path / "tls"
        second, second_key = make_cert(tls_dir, "second")
        # Replace the served pair (key first, then the certificate; renames, as tools do).
        for src, dst in ((second_key, "served.key"), (second, "served.crt")):
            shutil.copy(src, tls_dir / f"{dst}.new")
            (tls_dir / f"{dst}.new").rename(tls_dir / dst)
        deadline = time.monotonic() + 20
        while served_certificate(server) != pem_to_der(second):
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.25)
        c = hpfeeds.new(host, port, "reader", "reader-secret", reconnect=False, certfile=str(second))
        try:
            subscribe_synced(c)
        finally:
            c.close()
        # The connection made before the change still works.
        subscribe_synced(kept)
        # A broken certificate file is not taken: the second stays.
        (tls_dir / "served.crt").write_text("not a certificate\n")
        time.sleep(6)
        assert served_certificate(server) == pem_to_der(second)
    finally:
        kept.close()


# =====================================================================
# the PyPI package's own command-line client, and read rights across protocols
# =====================================================================
def hpfeeds_cli(server: HeraldServer, ident: str, *args: str) -> list[str]:
    host, port = address(server)
    exe = Path(sys.executable).with_name("hpfeeds")
    return [str(exe), *args[:1], "--host", host, "-p", str(port), "-i", ident, "-s", IDENTITIES[ident][0], *args[1:]]


def test_hpfeeds_command_line_client(hp_server: HeraldServer):
    reader = client(hp_server, "reader")
    subscriber = None
    try:
        subscribe_synced(reader, "events")
        out = subprocess.run(
            hpfeeds_cli(hp_server, "sensor", "publish", "-c", "events", "hello", "from", "cli"),
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "got error" not in out.stdout, out.stdout
        assert next_publish(reader) == ("sensor", "events", b"hello from cli")

        refused = subprocess.run(
            hpfeeds_cli(hp_server, "limited", "publish", "-c", "events", "nope"),
            capture_output=True, text=True, timeout=30,
        )
        assert "Authkey not allowed to pub here. ident=limited, chan=events" in refused.stdout, (
            refused.stdout + refused.stderr
        )

        # `hpfeeds subscribe` prints every publish it receives.
        subscriber = subprocess.Popen(
            hpfeeds_cli(hp_server, "reader", "subscribe", "-c", "events"),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in subscriber.stdout], daemon=True).start()
        deadline = time.monotonic() + IO_TIMEOUT * 2
        sensor = client(hp_server, "sensor")
        try:
            seen = ""
            while "publish to events by sensor" not in seen:
                assert time.monotonic() < deadline, f"hpfeeds subscribe printed {seen!r}"
                # Publish until the subscriber (whose SUBSCRIBE races this) shows one.
                sensor.publish("events", b"to the cli")
                try:
                    seen += lines.get(timeout=0.3)
                except queue.Empty:
                    pass
            assert "to the cli" in seen, seen
        finally:
            sensor.close()
    finally:
        reader.close()
        if subscriber is not None:
            subscriber.kill()
            subscriber.wait(timeout=10)


def test_hpfeeds_traffic_needs_read_rights_on_other_protocols(hp_server: HeraldServer):
    conn = admin(hp_server)
    resp = conn.create_user("outsider", "outsider-pw")
    assert resp.status_code == 201, resp.text
    outsider = Connection(hp_server.http_url)
    assert outsider.authenticate("outsider", "outsider-pw").status_code == 201
    sensor = client(hp_server, "sensor")
    try:
        sensor.publish("events", b"private")
        # Without `get` on bucket hpfeeds: no history, and a listen skips the stream.
        assert outsider.query("hpfeeds", "events").status_code == 401
        resp = outsider.listen(Subscriptions().add("hpfeeds", "events", 1), timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT)
        assert resp.status_code == 204, resp.text
        # With it, the same listen replays the publish.
        assert conn.grant("outsider", "get", "hpfeeds").status_code == 200
        entries = long_poll_until(outsider, Subscriptions().add("hpfeeds", "events", 1), lambda g: len(g) >= 1)
        assert entries[0]["data"] == "private" and entries[0]["meta"]["origin"] == "sensor", entries
    finally:
        sensor.close()
