"""MQTT interop: Herald's MQTT broker (`--mqtt`) driven by the real clients,
PyPI `paho-mqtt` 2.x (MQTT 3.1.1 and 5.0) and Debian's `mosquitto_pub` /
`mosquitto_sub` (mosquitto-clients), plus hand-made packets on raw sockets
for what no client sends (garbage, oversize packets, no DISCONNECT).

Every generic test runs twice through the `broker` fixture: against a real
Mosquitto (Debian `mosquitto`, started here on an ephemeral loopback port
with a generated config and password file, `allow_anonymous false`) and
against Herald (`--mqtt 127.0.0.1:0`, logged in as `admin` with full rights).
The Mosquitto run validates the tests themselves. Where Herald's contract
differs from Mosquitto on purpose, the test asserts per-broker expectations
(`expect(broker, herald=..., mosquitto=...)`) or skips the mosquitto variant
with the reason.

Herald-only tests (users, session tokens, grants, anonymous access,
cross-protocol with the IorioDB API, restart durability) use the
`herald_broker` fixture, whose only param is `herald`.

Run only one side with `-k mosquitto` or `-k herald`. The tools come from
`scripts/setup-mqtt-tools.sh` (apt) and `scripts/setup-python.sh` (paho).
Every wait is bounded (`mqtt_support.IO_TIMEOUT`, `QUIET_PERIOD`).
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from typing import Any, Iterator

import pytest
import requests
import sseclient  # sseclient-py

from herald_e2e import HeraldServer, make_cert
from iorio_client import Connection, Subscriptions
from mqtt_support import (
    CONNACK,
    DISCONNECT,
    IO_TIMEOUT,
    MOSQUITTO_PASSWORD,
    MOSQUITTO_USER,
    PINGREQ,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBREC,
    PUBREL,
    QUIET_PERIOD,
    SUBACK,
    V5,
    V311,
    Broker,
    CliSub,
    Client,
    Mosquitto,
    PacketTypes,
    RawConn,
    cli_pub,
    cli_sub_run,
    enc_ack,
    enc_connect,
    enc_disconnect,
    enc_publish,
    enc_subscribe,
    enc_varint,
    make_props,
    packet,
    tool,
)

ADMIN_PASSWORD = "herald-e2e-admin-password"
BOTH = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

# v3.1.1 CONNACK return codes / MQTT 5 reason codes used below.
RC3_BAD_CREDENTIALS = 4
RC3_NOT_AUTHORIZED = 5
RC_BAD_CREDENTIALS = 0x86
RC_NOT_AUTHORIZED = 0x87
RC_SESSION_TAKEN_OVER = 0x8E
RC_PACKET_TOO_LARGE = 0x95
RC_TOPIC_ALIAS_INVALID = 0x94
RC_DISCONNECT_WITH_WILL = 0x04
SUBACK_FAILURE_V3 = 0x80


# =====================================================================
# fixtures
# =====================================================================
def start_herald(request: pytest.FixtureRequest) -> Broker:
    """Herald with the MQTT listener on an ephemeral port and user `admin`."""
    factory = request.getfixturevalue("herald_factory")
    server: HeraldServer = factory(
        "--mqtt",
        "127.0.0.1:0",
        icepeak=False,
        metrics=False,
        env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )
    assert server.ready.get("mqtt", "").startswith("127.0.0.1:"), f"ready file lacks mqtt: {server.ready}"
    host, port = server.ready["mqtt"].rsplit(":", 1)
    return Broker("herald", host, int(port), "admin", ADMIN_PASSWORD, server=server)


@pytest.fixture(params=["mosquitto", "herald"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The broker under test: a fresh Mosquitto or a fresh Herald."""
    if request.param == "herald":
        yield start_herald(request)
        return
    try:
        mosq = Mosquitto().start()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield Broker("mosquitto", "127.0.0.1", mosq.port, MOSQUITTO_USER, MOSQUITTO_PASSWORD, mosquitto=mosq)
    finally:
        mosq.stop()
        # Shown by pytest only when the test failed ("Captured stdout teardown").
        print(mosq.logs())
        mosq.close()


@pytest.fixture(params=["herald"])
def herald_broker(request: pytest.FixtureRequest) -> Broker:
    """Herald only (tests of Herald's users, grants, streams and restarts)."""
    return start_herald(request)


class Made:
    """Tracks clients/raw connections/CLI processes a test makes; closes all."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.items: list[Any] = []

    def client(self, client_id: str = "", **kw: Any) -> Client:
        c = Client(self.broker, client_id, **kw)
        self.items.append(c)
        return c

    def connected(self, client_id: str = "", *, props: Any = None, will: Any = None, **kw: Any) -> Client:
        c = self.client(client_id, **kw)
        c.connect(properties=props, will=will)
        return c

    def raw(self) -> RawConn:
        r = RawConn(self.broker)
        self.items.append(r)
        return r

    def cli_sub(self, *args: str, **kw: Any) -> CliSub:
        s = CliSub(self.broker, *args, **kw)
        self.items.append(s)
        return s

    def close(self) -> None:
        for item in reversed(self.items):
            try:
                item.close()
            except Exception:  # noqa: BLE001 - cleanup is best effort
                pass


@pytest.fixture
def made(broker: Broker) -> Iterator[Made]:
    m = Made(broker)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def hmade(herald_broker: Broker) -> Iterator[Made]:
    m = Made(herald_broker)
    try:
        yield m
    finally:
        m.close()


def expect(broker: Broker, *, herald: Any, mosquitto: Any) -> Any:
    """The expectation for this broker where the two deliberately differ."""
    return herald if broker.is_herald else mosquitto


def raw_login(broker: Broker) -> dict[str, str]:
    return {"username": broker.username, "password": broker.password}


def pub_props(**values: Any):
    return make_props(PacketTypes.PUBLISH, **values)


def connect_props(**values: Any):
    return make_props(PacketTypes.CONNECT, **values)


def payloads(msgs) -> list[bytes]:
    return [m.payload for m in msgs]


def publish_size(topic: str, payload_len: int, version: int, qos: int = 1) -> int:
    """Total bytes of a PUBLISH built by `enc_publish`."""
    rl = 2 + len(topic.encode()) + (2 if qos else 0) + (1 if version == V5 else 0) + payload_len
    return 1 + len(enc_varint(rl)) + rl


def payload_for_size(topic: str, total: int, version: int, qos: int = 1) -> int:
    """The payload length that makes the PUBLISH exactly `total` bytes."""
    n = max(total - publish_size(topic, 0, version, qos), 0)
    while publish_size(topic, n, version, qos) > total:
        n -= 1
    while publish_size(topic, n, version, qos) < total:
        n += 1
    assert publish_size(topic, n, version, qos) == total
    return n


# =====================================================================
# connect, auth, basic pub/sub
# =====================================================================
@BOTH
def test_connect_connack(broker: Broker, made: Made, version: int):
    """A credentialed CONNECT succeeds; MQTT 5 CONNACK advertises Topic Alias Maximum and Maximum Packet Size."""
    c = made.client("cc-1", version=version)
    ack = c.connect()
    assert ack.rc == 0 and ack.session_present is False, ack
    if version == V5:
        assert ack.props.get("topic_alias_maximum", 0) >= 1, f"CONNACK lacks Topic Alias Maximum: {ack.props}"
        assert ack.props.get("maximum_packet_size", 0) > 0, f"CONNACK lacks Maximum Packet Size: {ack.props}"
    # and the raw CONNACK bytes agree
    r = made.raw()
    present, code, p = r.connect("cc-raw", version=version, **raw_login(broker))
    assert (present, code) == (False, 0)
    if version == V5:
        assert p.get("topic_alias_maximum", 0) >= 1 and p.get("maximum_packet_size", 0) > 0, p


@BOTH
def test_wrong_password_refused(broker: Broker, made: Made, version: int):
    """A wrong password gets a refusing CONNACK (Herald: 4 / 0x86) and the connection is closed."""
    # Mosquitto 2.0 answers a bad password with "not authorized" (5 / 0x87).
    code3 = expect(broker, herald=RC3_BAD_CREDENTIALS, mosquitto=RC3_NOT_AUTHORIZED)
    code5 = expect(broker, herald=RC_BAD_CREDENTIALS, mosquitto=RC_NOT_AUTHORIZED)
    r = made.raw()
    r.send(enc_connect("wp-raw", version=version, username=broker.username, password="wrong-password"))
    pkts = r.read_until_closed()
    assert pkts and pkts[0].ptype == CONNACK, f"expected a CONNACK, got {pkts}"
    present, code, _ = pkts[0].connack(version)
    assert code == (code5 if version == V5 else code3), f"CONNACK code {code:#x}"
    assert not present
    # paho sees the refusal too (its v3 codes are mapped onto MQTT 5 reason codes)
    c = made.client("wp-paho", version=version, password="wrong-password")
    ack = c.connect(expect_rc=None)
    assert ack.rc == code5, f"paho CONNACK reason {ack.rc:#x}"
    c.wait_closed()
    # mosquitto_pub exits with the CONNACK code
    out = cli_pub(broker, "-t", "wp/cli", "-m", "x", version=version, password="wrong-password")
    assert out.returncode == (code5 if version == V5 else code3), (out.returncode, out.stdout, out.stderr)


@BOTH
def test_qos_matrix(broker: Broker, made: Made, version: int):
    """Each publish QoS x subscription QoS combination is delivered once at min(pub, sub) QoS."""
    sub = made.connected("qm-sub", version=version)
    codes = sub.subscribe(("qm/0", 0), ("qm/1", 1), ("qm/2", 2))
    assert codes == [0, 1, 2], codes
    pub = made.connected("qm-pub", version=version)
    for sq in range(3):
        for pq in range(3):
            assert pub.publish(f"qm/{sq}", f"p{pq}s{sq}", qos=pq) == 0
    got = sub.recv_n(9)
    seen = {(m.topic, m.payload): m.qos for m in got}
    want = {(f"qm/{sq}", f"p{pq}s{sq}".encode()): min(pq, sq) for sq in range(3) for pq in range(3)}
    assert seen == want
    assert all(not m.retain for m in got)
    sub.assert_quiet()


@BOTH
def test_many_messages_in_order_exactly_once(broker: Broker, made: Made, version: int):
    """50 QoS 2 and 50 QoS 1 messages arrive complete, in order, without duplicates."""
    sub = made.connected("ord-sub", version=version)
    assert sub.subscribe(("ord/two", 2), ("ord/one", 1)) == [2, 1]
    pub = made.connected("ord-pub", version=version)
    for k in range(50):
        pub.publish("ord/two", f"{k}", qos=2, wait=False)
        pub.publish("ord/one", f"{k}", qos=1, wait=False)
    got = sub.recv_n(100, timeout=15)
    for topic, qos in (("ord/two", 2), ("ord/one", 1)):
        msgs = [m for m in got if m.topic == topic]
        payloads = [int(m.payload) for m in msgs]
        if broker.kind == "mosquitto":
            # The reference broker (Debian's Mosquitto 2.0.11) once delivered the QoS 2
            # messages out of order under load in CI (2026-11-24: 48 before 43), which MQTT's
            # ordered-topic rule does not allow; from it, only completeness and exactly-once
            # are asserted. Herald is held to the order.
            payloads.sort()
        assert payloads == list(range(50)), topic
        assert {m.qos for m in msgs} == {qos}
    sub.assert_quiet()


@BOTH
def test_unsubscribe_stops_delivery(broker: Broker, made: Made, version: int):
    """After UNSUBSCRIBE (acknowledged) nothing more arrives on that filter; other filters still deliver."""
    sub = made.connected("us-sub", version=version)
    sub.subscribe(("us/a", 1), ("us/b", 1))
    pub = made.connected("us-pub", version=version)
    pub.publish("us/a", "1", qos=1)
    assert sub.recv().payload == b"1"
    sub.unsubscribe("us/a")
    pub.publish("us/a", "2", qos=1)
    pub.publish("us/b", "3", qos=1)
    m = sub.recv()
    assert (m.topic, m.payload) == ("us/b", b"3")
    sub.assert_quiet()


# =====================================================================
# retained messages and wildcards
# =====================================================================
@BOTH
def test_retained_messages(broker: Broker, made: Made, version: int):
    """A retained message goes to later subscribers with retain=1, is replaced by the next, cleared by an empty one."""
    pub = made.connected("rt-pub", version=version)
    pub.publish("rt/a", "first", qos=1, retain=True)
    pub.publish("rt/a", "second", qos=1, retain=True)
    pub.publish("rt/b", "other", qos=0, retain=True)
    # QoS 0 has no acknowledgement; a QoS 1 publish on the same connection afterwards is one
    # (brokers handle a connection's packets in order), so the retained message is stored
    # before the subscriber below connects.
    pub.publish("rt/barrier", "x", qos=1)
    s1 = made.connected("rt-s1", version=version)
    s1.subscribe(("rt/#", 1))
    got = {m.topic: m for m in s1.recv_n(2)}
    assert got["rt/a"].payload == b"second" and got["rt/a"].retain
    assert got["rt/b"].payload == b"other" and got["rt/b"].retain and got["rt/b"].qos == 0
    s1.assert_quiet()
    # a live message to an existing subscription is not flagged retained
    pub.publish("rt/a", "live", qos=1, retain=True)
    live = s1.recv()
    assert live.payload == b"live" and live.retain is False
    # an empty retained payload clears the topic and is itself not stored
    pub.publish("rt/a", b"", qos=1, retain=True)
    assert s1.recv().payload == b""
    s2 = made.connected("rt-s2", version=version)
    s2.subscribe(("rt/#", 1))
    m = s2.recv()
    assert (m.topic, m.payload, m.retain) == ("rt/b", b"other", True)
    s2.assert_quiet()


def test_wildcards_and_dollar_topics(broker: Broker, made: Made):
    """`+` and `#` match as specified; topics starting with `$` are not matched by a leading wildcard."""
    subs = {}
    for name, flt in {
        "plus": "+/+/c",
        "hash": "#",
        "w_plus": "w/+",
        "w_hash": "w/#",
        "mid": "w/+/c",
        "dollar": "$ctl/#",
        "dollar_plus": "+/a/c",
    }.items():
        c = made.connected(f"wc-{name}")
        assert c.subscribe((flt, 1)) == [1], flt
        subs[name] = c
    pub = made.connected("wc-pub")
    topics = ["w/a/c", "w/b/c", "w/a/d", "w/a", "x/y/c", "w/a/b/c", "$ctl/a/c"]
    for t in topics:
        assert pub.publish(t, t, qos=1) == 0, t
    want = {
        "plus": {"w/a/c", "w/b/c", "x/y/c"},
        "hash": {"w/a/c", "w/b/c", "w/a/d", "w/a", "x/y/c", "w/a/b/c"},
        "w_plus": {"w/a"},
        "w_hash": {"w/a/c", "w/b/c", "w/a/d", "w/a", "w/a/b/c"},
        "mid": {"w/a/c", "w/b/c"},
        "dollar": {"$ctl/a/c"},
        "dollar_plus": {"w/a/c"},
    }
    for name, c in subs.items():
        msgs = c.recv_n(len(want[name]))
        got = [m.topic for m in msgs]
        assert set(got) == want[name] and len(got) == len(want[name]), (name, got)
        assert all(m.payload == m.topic.encode() for m in msgs), (name, msgs)
    time.sleep(QUIET_PERIOD)  # one quiet period for all subscribers
    for name, c in subs.items():
        c.assert_quiet(0.01)


# =====================================================================
# sessions
# =====================================================================
@BOTH
def test_persistent_session_queues_qos1_and_qos2(broker: Broker, made: Made, version: int):
    """A persistent session keeps its subscription and queues QoS 1/2 messages while the client is away."""
    kw: dict[str, Any] = {"version": version, "clean": False}
    props = connect_props(SessionExpiryInterval=3600) if version == V5 else None
    first = made.client("ps-client", **kw)
    assert first.connect(properties=props).session_present is False
    assert first.subscribe(("ps/t", 2)) == [2]
    first.disconnect()
    pub = made.connected("ps-pub", version=version)
    for k in range(3):
        pub.publish("ps/t", f"q1-{k}", qos=1)
    pub.publish("ps/t", "q2", qos=2)
    again = made.client("ps-client", **kw)
    ack = again.connect(properties=props)
    assert ack.session_present is True, ack
    got = again.recv_n(4)
    assert payloads(got) == [b"q1-0", b"q1-1", b"q1-2", b"q2"]
    assert [m.qos for m in got] == [1, 1, 1, 2]
    # the subscription survived too: live messages still arrive
    pub.publish("ps/t", "live", qos=1)
    assert again.recv().payload == b"live"
    again.assert_quiet()


@BOTH
def test_clean_session_discards_state(broker: Broker, made: Made, version: int):
    """Connecting with clean session / clean start drops the stored session and its queued messages."""
    props = connect_props(SessionExpiryInterval=3600) if version == V5 else None
    first = made.client("cs-client", version=version, clean=False)
    first.connect(properties=props)
    first.subscribe(("cs/t", 1))
    first.disconnect()
    pub = made.connected("cs-pub", version=version)
    pub.publish("cs/t", "queued", qos=1)
    fresh = made.client("cs-client", version=version, clean=True)
    assert fresh.connect().session_present is False
    fresh.assert_quiet()
    pub.publish("cs/t", "after", qos=1)
    fresh.assert_quiet()  # the old subscription is gone


@BOTH
def test_session_takeover(broker: Broker, made: Made, version: int):
    """A second CONNECT with the same client id closes the first connection (MQTT 5: DISCONNECT 0x8E)."""
    first = made.connected("takeover", version=version)
    first.subscribe(("to/t", 1))
    second = made.connected("takeover", version=version)
    info = first.wait_closed()
    # Mosquitto 2.0.11 just closes the old connection, without DISCONNECT 0x8E.
    if version == V5 and broker.is_herald:
        assert info.from_server and info.rc == RC_SESSION_TAKEN_OVER, info
    second.subscribe(("to/t", 1))
    pub = made.connected("to-pub", version=version)
    pub.publish("to/t", "x", qos=1)
    assert second.recv().payload == b"x"
    assert second.closed.is_set() is False


# =====================================================================
# wills and keep-alive
# =====================================================================
@BOTH
def test_will_on_abnormal_disconnect_only(broker: Broker, made: Made, version: int):
    """The will is published when the socket drops without DISCONNECT, not after a normal DISCONNECT."""
    watcher = made.connected("wl-watch", version=version)
    watcher.subscribe(("wl/#", 2))
    will_props = pub_props(ContentType="text/plain", UserProperty=[("why", "gone")]) if version == V5 else None
    dying = made.client("wl-dying", version=version)
    dying.connect(will={"topic": "wl/dying", "payload": "bye", "qos": 1, "properties": will_props})
    polite = made.client("wl-polite", version=version)
    polite.connect(will={"topic": "wl/polite", "payload": "bye", "qos": 1})
    polite.disconnect()
    dying.drop()
    m = watcher.recv()
    assert (m.topic, m.payload, m.qos, m.retain) == ("wl/dying", b"bye", 1, False)
    if version == V5:
        assert m.props.get("content_type") == "text/plain", m.props
        assert m.props.get("user_properties") == [("why", "gone")], m.props
    watcher.assert_quiet()


def test_v5_disconnect_with_will_message(broker: Broker, made: Made):
    """An MQTT 5 DISCONNECT with reason 0x04 publishes the will; one with 0x00 does not."""
    watcher = made.connected("dw-watch")
    watcher.subscribe(("dw/#", 1))
    a = made.client("dw-a")
    a.connect(will={"topic": "dw/a", "payload": "will-a", "qos": 1, "retain": True})
    b = made.client("dw-b")
    b.connect(will={"topic": "dw/b", "payload": "will-b", "qos": 1})
    b.disconnect(reason=0)
    a.disconnect(reason=RC_DISCONNECT_WITH_WILL)
    m = watcher.recv()
    assert (m.topic, m.payload) == ("dw/a", b"will-a")
    watcher.assert_quiet()
    # the will was retained
    late = made.connected("dw-late")
    late.subscribe(("dw/#", 1))
    r = late.recv()
    assert (r.topic, r.payload, r.retain) == ("dw/a", b"will-a", True)


def test_v5_will_delay_interval(broker: Broker, made: Made):
    """MQTT 5 Will Delay Interval (1 s): the will comes after the delay, and not at all when the client is back in time."""
    watcher = made.connected("wd-watch")
    watcher.subscribe(("wd/#", 1))
    will_props = make_props(PacketTypes.WILLMESSAGE, WillDelayInterval=1)
    session = connect_props(SessionExpiryInterval=60)
    late = made.client("wd-late", clean=False)
    late.connect(properties=session, will={"topic": "wd/late", "payload": "late", "qos": 1, "properties": will_props})
    back = made.client("wd-back", clean=False)
    back.connect(properties=session, will={"topic": "wd/back", "payload": "back", "qos": 1, "properties": will_props})
    t0 = time.monotonic()
    late.drop()
    back.drop()
    returned = made.client("wd-back", clean=False)
    assert returned.connect(properties=session).session_present is True
    watcher.assert_quiet(0.7)  # nothing before the delay
    m = watcher.recv(timeout=8)
    elapsed = time.monotonic() - t0
    assert (m.topic, m.payload) == ("wd/late", b"late")
    assert elapsed >= 0.9, f"will sent after {elapsed:.2f}s, before the 1 s delay"
    watcher.assert_quiet()


def test_keepalive_timeout_closes_and_sends_will(broker: Broker, made: Made):
    """PINGREQ gets PINGRESP; a client silent past 1.5 x keep-alive (1 s) is closed and its will published."""
    watcher = made.connected("ka-watch")
    watcher.subscribe(("ka/#", 1))
    conns = {}
    for version in (V311, V5):  # both idle at the same time: one wait covers both
        r = made.raw()
        will = (f"ka/v{version}", b"timed-out", 1, False)
        _, code, _ = r.connect(f"ka-raw-{version}", version=version, keepalive=1, will=will, **raw_login(broker))
        assert code == 0
        r.send(packet(PINGREQ, 0, b""))
        pong = r.read()
        assert pong is not None and pong.ptype == PINGRESP, pong
        conns[version] = (r, time.monotonic())
    # Herald: closed within ~3 s. Mosquitto 2.0.11 only checks keep-alives
    # every few seconds and closes after about 6 s.
    limit = expect(broker, herald=3.5, mosquitto=9.0)
    for version, (r, t0) in conns.items():
        rest = r.read_until_closed(timeout=max(limit - (time.monotonic() - t0), 0.1))
        elapsed = time.monotonic() - t0
        assert elapsed >= 1.0, f"v{version}: closed after {elapsed:.2f}s, before the keep-alive expired"
        assert all(p.ptype == DISCONNECT for p in rest), (version, rest)
        if version == V5 and rest:
            assert rest[0].reason()[1] == 0x8D, rest  # Keep Alive timeout
    got = watcher.recv_n(2)
    assert sorted((m.topic, m.payload) for m in got) == [("ka/v4", b"timed-out"), ("ka/v5", b"timed-out")]


# =====================================================================
# MQTT 5 features
# =====================================================================
def test_v5_message_and_session_expiry(broker: Broker, made: Made):
    """Expired retained/queued messages and sessions are gone; delivered messages carry the remaining expiry."""
    pub = made.connected("me-pub")
    away = made.client("me-away", clean=False)
    away.connect(properties=connect_props(SessionExpiryInterval=300))
    away.subscribe(("me/q/#", 1))
    away.disconnect()
    # a session with Session Expiry Interval 1 (checked after the same wait)
    short = made.client("me-short-session", clean=False)
    short.connect(properties=connect_props(SessionExpiryInterval=1))
    short.subscribe(("me/q/#", 1))
    short.disconnect()
    pub.publish("me/r/short", "rs", qos=1, retain=True, properties=pub_props(MessageExpiryInterval=1))
    pub.publish("me/r/long", "rl", qos=1, retain=True, properties=pub_props(MessageExpiryInterval=60))
    pub.publish("me/q/short", "qs", qos=1, properties=pub_props(MessageExpiryInterval=1))
    pub.publish("me/q/long", "ql", qos=1, properties=pub_props(MessageExpiryInterval=60))
    # a live delivery keeps the expiry
    live = made.connected("me-live")
    live.subscribe(("me/live", 1))
    pub.publish("me/live", "lv", qos=1, properties=pub_props(MessageExpiryInterval=60))
    lm = live.recv()
    assert lm.payload == b"lv" and 58 <= lm.props.get("message_expiry", -1) <= 60, lm.props
    time.sleep(2.2)
    fresh = made.connected("me-fresh")
    fresh.subscribe(("me/r/#", 1))
    m = fresh.recv()
    assert (m.topic, m.payload, m.retain) == ("me/r/long", b"rl", True)
    assert 1 <= m.props.get("message_expiry", -1) <= 58, f"remaining expiry: {m.props}"
    fresh.assert_quiet()
    back = made.client("me-away", clean=False)
    assert back.connect(properties=connect_props(SessionExpiryInterval=300)).session_present
    q = back.recv()
    assert (q.topic, q.payload) == ("me/q/long", b"ql")
    assert 1 <= q.props.get("message_expiry", -1) <= 58, f"remaining expiry: {q.props}"
    back.assert_quiet()
    gone = made.client("me-short-session", clean=False)
    ack = gone.connect(properties=connect_props(SessionExpiryInterval=1))
    assert ack.session_present is False, f"session with expiry 1 s still there after 2 s: {ack}"
    gone.assert_quiet()


def test_v5_topic_alias(broker: Broker, made: Made):
    """Client-to-server topic aliases: set with a topic, then used with an empty topic name."""
    sub = made.connected("al-sub")
    sub.subscribe(("al/#", 1))
    pub = made.client("al-pub")
    ack = pub.connect()
    assert ack.props.get("topic_alias_maximum", 0) >= 1, ack.props
    assert pub.publish("al/long/topic/name", "one", qos=1, properties=pub_props(TopicAlias=1)) == 0
    assert pub.publish("", "two", qos=1, properties=pub_props(TopicAlias=1)) == 0
    assert pub.publish("al/other", "three", qos=1, properties=pub_props(TopicAlias=1)) == 0  # remap
    assert pub.publish("", "four", qos=1, properties=pub_props(TopicAlias=1)) == 0
    msgs = sub.recv_n(4)
    got = [(m.topic, m.payload) for m in msgs]
    assert got == [
        ("al/long/topic/name", b"one"),
        ("al/long/topic/name", b"two"),
        ("al/other", b"three"),
        ("al/other", b"four"),
    ]
    assert all("topic_alias" not in m.props for m in msgs), "the subscriber allowed no topic aliases"


def test_v5_topic_alias_out_of_range(broker: Broker, made: Made):
    """A topic alias above the advertised Topic Alias Maximum gets DISCONNECT 0x94."""
    r = made.raw()
    _, code, p = r.connect("al-raw", **raw_login(broker))
    assert code == 0
    too_big = p.get("topic_alias_maximum", 0) + 1
    r.send(enc_publish("al/x", b"x", qos=1, properties={"topic_alias": too_big}))
    pkts = r.read_until_closed()
    assert pkts and pkts[-1].ptype == DISCONNECT and pkts[-1].reason()[1] == RC_TOPIC_ALIAS_INVALID, pkts


def test_v5_user_properties_and_content_type(broker: Broker, made: Made):
    """User properties (order and duplicates kept), content type and payload format reach subscribers."""
    sub = made.connected("up-sub")
    sub.subscribe(("up/t", 1))
    v3sub = made.connected("up-v3", version=V311)
    v3sub.subscribe(("up/t", 1))
    pub = made.connected("up-pub")
    user = [("k", "v1"), ("k", "v2"), ("ünï", "cödé"), ("empty", "")]
    pub.publish(
        "up/t",
        "hello",
        qos=1,
        properties=pub_props(UserProperty=user, ContentType="text/plain; charset=utf-8", PayloadFormatIndicator=1),
    )
    m = sub.recv()
    assert m.payload == b"hello"
    assert m.props.get("user_properties") == user, m.props
    assert m.props.get("content_type") == "text/plain; charset=utf-8", m.props
    assert m.props.get("payload_format") == 1, m.props
    assert v3sub.recv().payload == b"hello"  # a v3.1.1 subscriber gets the bare message


def test_v5_response_topic_and_correlation_data(broker: Broker, made: Made):
    """Response Topic and Correlation Data are forwarded unchanged (request/response pattern)."""
    sub = made.connected("rr-sub")
    sub.subscribe(("rr/req", 1))
    pub = made.connected("rr-pub")
    pub.publish("rr/req", "ping", qos=1, properties=pub_props(ResponseTopic="rr/resp/1", CorrelationData=b"\x00\x01id"))
    m = sub.recv()
    assert m.props.get("response_topic") == "rr/resp/1" and m.props.get("correlation_data") == b"\x00\x01id", m.props


@BOTH
def test_suback_codes_per_filter(broker: Broker, made: Made, version: int):
    """SUBACK has one code per filter, the granted QoS; an invalid filter is refused (or the client closed)."""
    c = made.connected("sa-paho", version=version)
    assert c.subscribe(("sa/0", 0), ("sa/1", 1), ("sa/2", 2), ("sa/+/x", 1), ("sa/#", 2)) == [0, 1, 2, 1, 2]
    # an invalid filter (`#` not last) on a raw connection
    r = made.raw()
    r.connect("sa-raw", version=version, **raw_login(broker))
    r.send(enc_subscribe(7, [("sa/ok", 1), ("sa/#/bad", 1)], version=version))
    pkt = r.read()
    if pkt is not None and pkt.ptype == SUBACK:
        pid, codes = pkt.suback(version)
        assert pid == 7 and codes[0] == 1 and codes[1] >= 0x80, codes
    else:
        # the spec also allows closing the connection (MQTT 5: DISCONNECT >= 0x80 first)
        rest = ([pkt] if pkt is not None else []) + r.read_until_closed()
        assert all(p.ptype == DISCONNECT and p.reason(version)[1] >= 0x80 for p in rest), rest


@pytest.mark.parametrize("receive_max", [1, 2])
def test_v5_receive_maximum_honoured(broker: Broker, made: Made, receive_max: int):
    """The server never has more unacknowledged QoS 1 messages in flight than the client's Receive Maximum."""
    if receive_max > 1 and not broker.is_herald:
        pytest.skip(
            "mosquitto: 2.0.11 releases up to Receive Maximum queued messages per PUBACK "
            "(3 unacknowledged with Receive Maximum 2)"
        )
    sub = made.client("rm-sub", manual_ack=True)
    sub.connect(properties=connect_props(ReceiveMaximum=receive_max))
    sub.subscribe(("rm/t", 1))
    pub = made.connected("rm-pub")
    total = receive_max + 3
    for k in range(total):
        pub.publish("rm/t", f"{k}", qos=1)
    pending = sub.recv_n(receive_max)
    received = list(pending)
    sub.assert_quiet()  # one more would exceed Receive Maximum
    while len(received) < total:
        oldest = pending.pop(0)
        sub.ack(oldest.mid, 1)
        m = sub.recv()  # each PUBACK frees exactly one slot
        pending.append(m)
        received.append(m)
        sub.assert_quiet()
    assert payloads(received) == [f"{k}".encode() for k in range(total)]
    assert not any(m.dup for m in received)
    for m in pending:
        sub.ack(m.mid, 1)


@BOTH
def test_maximum_packet_size(broker: Broker, made: Made, version: int):
    """A packet of exactly the advertised Maximum Packet Size is accepted; one byte more closes (v5: DISCONNECT 0x95)."""
    probe = made.raw()
    _, _, p = probe.connect("mp-probe", **raw_login(broker))
    limit = p.get("maximum_packet_size")
    assert limit, f"CONNACK lacks Maximum Packet Size: {p}"
    probe.send(enc_disconnect(0))
    sub = made.connected("mp-sub")
    sub.subscribe(("mp/t", 1))
    big_limit = limit > 16 * 1024 * 1024
    r = made.raw()
    r.connect("mp-raw", version=version, **raw_login(broker))
    if not big_limit:
        n = payload_for_size("mp/t", limit, version)
        assert r.send(enc_publish("mp/t", b"a" * n, qos=1, pid=1, version=version))
        ack = r.read(timeout=10)
        assert ack is not None and ack.ptype == PUBACK and ack.reason(version)[:2] == (1, 0), ack
        assert len(sub.recv(timeout=10).payload) == n
    # Mosquitto 2.0.11 compares only the Remaining Length with its limit, so
    # its smallest refused packet is 4 bytes over (1 type byte + 3 length bytes).
    over = limit + expect(broker, herald=1, mosquitto=1 + len(enc_varint(limit)))
    n = payload_for_size("mp/t", over, version)
    data = enc_publish("mp/t", b"b" * n, qos=1, pid=2, version=version)
    r.send(data if not big_limit else data[: 64 * 1024])  # a huge limit: the header must be enough
    pkts = r.read_until_closed(timeout=10)
    assert not any(pk.ptype == PUBACK for pk in pkts), pkts
    if version == V5:
        assert pkts and pkts[-1].ptype == DISCONNECT and pkts[-1].reason()[1] == RC_PACKET_TOO_LARGE, pkts
    else:
        assert pkts == [], pkts
    sub.assert_quiet()


def test_shared_subscriptions(broker: Broker, made: Made):
    """`$share/group/filter`: each message goes to exactly one member of a group, and to every group."""
    g1a = made.connected("sh-g1a")
    g1b = made.connected("sh-g1b", version=V311)
    g2 = made.connected("sh-g2")
    plain = made.connected("sh-plain")
    for c, flt in ((g1a, "$share/g1/sh/#"), (g1b, "$share/g1/sh/#"), (g2, "$share/g2/sh/+"), (plain, "sh/#")):
        assert c.subscribe((flt, 1)) == [1], flt
    pub = made.connected("sh-pub")
    want = [f"m{k}".encode() for k in range(20)]
    for p in want:
        pub.publish("sh/x", p, qos=1)
    assert sorted(payloads(g2.recv_n(20))) == sorted(want)
    assert sorted(payloads(plain.recv_n(20))) == sorted(want)
    ma: list = []
    mb: list = []
    deadline = time.monotonic() + IO_TIMEOUT
    while len(ma) + len(mb) < len(want) and time.monotonic() < deadline:
        for c, box in ((g1a, ma), (g1b, mb)):
            box += c.drain(0.05)
    g1a.assert_quiet(0.1)
    g1b.assert_quiet(0.1)
    a, b = payloads(ma), payloads(mb)
    assert sorted(a + b) == sorted(want), f"group g1 got {len(a)}+{len(b)}: {a} / {b}"
    assert not set(a) & set(b), "a message went to two members of one group"
    assert all(m.topic == "sh/x" for m in ma + mb)


# =====================================================================
# bad input on raw sockets
# =====================================================================
def test_garbage_and_protocol_violations_close(broker: Broker, made: Made):
    """Garbage, a first packet other than CONNECT, a bad length, a second CONNECT: closed, never a hang."""
    cases = {
        "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "pingreq-first": packet(PINGREQ, 0, b""),
        "publish-first": enc_publish("bad/t", b"x", qos=0, version=V311),
        "bad-remaining-length": b"\x10\xff\xff\xff\xff\xff",
        "bad-protocol-name": enc_connect("bp", version=V311, protocol_name="MQTX"),
    }
    for name, data in cases.items():
        r = made.raw()
        r.send(data)
        pkts = r.read_until_closed()
        assert all(p.ptype in (CONNACK, DISCONNECT) for p in pkts), (name, pkts)
        if pkts and pkts[0].ptype == CONNACK:
            assert pkts[0].body[-1] != 0, (name, pkts)  # never an accepting CONNACK
    # unknown protocol level: CONNACK 0x01 (3.1.1) / 0x84 (5) or a plain close
    r = made.raw()
    r.send(enc_connect("pl", version=7, **raw_login(broker)))
    pkts = r.read_until_closed()
    assert pkts == [] or (pkts[0].ptype == CONNACK and pkts[0].body[1] in (0x01, 0x84)), pkts
    # after a CONNECT, a second CONNECT and a reserved packet type are protocol errors
    for version in (V311, V5):
        for name, data in {"second-connect": enc_connect("x2", version=version), "reserved-type": b"\x00\x00"}.items():
            r = made.raw()
            _, code, _ = r.connect(f"pv-{version}", version=version, **raw_login(broker))
            assert code == 0
            r.send(data)
            pkts = r.read_until_closed()
            if version == V5 and (broker.is_herald or name == "reserved-type"):
                # the protocol is known: DISCONNECT Malformed (0x81) or Protocol Error (0x82).
                # (Mosquitto 2.0.11 closes on a second CONNECT without DISCONNECT.)
                assert [p.ptype for p in pkts] == [DISCONNECT], (name, pkts)
                assert pkts[0].reason()[1] in (0x81, 0x82), (name, pkts)
            else:
                assert pkts == [], (name, pkts)
    # the broker still serves
    c = made.connected("after-garbage")
    c.subscribe(("ok/t", 1))
    c.publish("ok/t", "fine", qos=1)
    assert c.recv().payload == b"fine"


def test_raw_qos2_flow(broker: Broker, made: Made):
    """A hand-driven QoS 2 exchange: PUBREC, PUBREL, PUBCOMP; a resent PUBLISH before PUBREL is not delivered twice."""
    sub = made.connected("q2-sub")
    sub.subscribe(("q2/t", 2))
    for version in (V311, V5):
        r = made.raw()
        r.connect(f"q2-raw-{version}", version=version, **raw_login(broker))
        data = enc_publish("q2/t", f"v{version}".encode(), qos=2, pid=9, version=version)
        r.send(data)
        rec = r.read()
        assert rec is not None and rec.ptype == PUBREC and rec.reason(version)[:2] == (9, 0), rec
        dup = bytearray(data)
        dup[0] |= 0x08  # DUP
        r.send(bytes(dup))
        rec2 = r.read()
        assert rec2 is not None and rec2.ptype == PUBREC and rec2.reason(version)[0] == 9, rec2
        r.send(enc_ack(PUBREL, 9))
        comp = r.read()
        assert comp is not None and comp.ptype == PUBCOMP and comp.reason(version)[:2] == (9, 0), comp
        m = sub.recv()
        assert m.payload == f"v{version}".encode() and m.qos == 2
        sub.assert_quiet()


# =====================================================================
# mosquitto-clients (mosquitto_pub / mosquitto_sub)
# =====================================================================
FMT = CliSub.MSG_PREFIX + "%t|%q|%r|%p"


@BOTH
def test_cli_pub_sub_all_qos(broker: Broker, made: Made, version: int):
    """mosquitto_pub at QoS 0/1/2 reaches mosquitto_sub (-q 2) and a paho subscriber at the right QoS."""
    s = made.cli_sub("-t", "cli/#", "-q", "2", "-F", FMT, version=version)
    s.wait_subscribed()
    paho_sub = made.connected("cli-paho", version=version)
    paho_sub.subscribe(("cli/#", 2))
    for q in range(3):
        out = cli_pub(broker, "-t", f"cli/q{q}", "-q", str(q), "-m", f"hello {q}", version=version)
        assert out.returncode == 0, (out.stdout, out.stderr)
    lines = sorted(s.messages(3))
    assert lines == [f"cli/q{q}|{q}|0|hello {q}" for q in range(3)]
    got = sorted((m.topic, m.qos, m.payload) for m in paho_sub.recv_n(3))
    assert got == [(f"cli/q{q}", q, f"hello {q}".encode()) for q in range(3)]


@BOTH
def test_cli_retained_and_clear(broker: Broker, made: Made, version: int):
    """mosquitto_pub -r stores a retained message that mosquitto_sub -C 1 prints; -n -r clears it."""
    out = cli_pub(broker, "-t", "clr/a", "-r", "-q", "1", "-m", "kept", version=version)
    assert out.returncode == 0, out.stderr
    got = cli_sub_run(broker, "-t", "clr/a", "-q", "1", "-C", "1", "-W", "5", "-F", "%r|%q|%p", version=version)
    assert got.returncode == 0 and got.stdout == "1|1|kept\n", (got.returncode, got.stdout, got.stderr)
    # QoS 1, so that mosquitto_pub exits only once the broker has taken each publish: at QoS 0
    # it may exit before the broker has read it, and a subscriber started right after could
    # then see the old retained message, or the marker below as a live one (seen under load).
    out = cli_pub(broker, "-t", "clr/a", "-r", "-n", "-q", "1", version=version)
    assert out.returncode == 0, out.stderr
    # a retained message on another topic shows that the subscription works
    marker = cli_pub(broker, "-t", "clr/b", "-r", "-q", "1", "-m", "other", version=version)
    assert marker.returncode == 0, marker.stderr
    got = cli_sub_run(broker, "-t", "clr/#", "-C", "1", "-W", "5", "-F", "%t|%r|%p", version=version)
    assert got.stdout == "clr/b|1|other\n", f"cleared retained message still delivered: {got.stdout!r}"
    check = made.connected("clr-check", version=version)
    check.subscribe(("clr/a", 1))
    check.assert_quiet()


def test_cli_v5_properties(broker: Broker, made: Made):
    """mosquitto_pub -V mqttv5 -D PUBLISH ... properties reach mosquitto_sub -F (%P %C %E %F) and paho."""
    s = made.cli_sub("-t", "clp/t", "-q", "1", "-F", CliSub.MSG_PREFIX + "%P|%C|%E|%F|%R|%p", version=V5)
    s.wait_subscribed()
    paho_sub = made.connected("clp-paho")
    paho_sub.subscribe(("clp/t", 1))
    out = cli_pub(
        broker,
        "-t", "clp/t", "-q", "1", "-m", "with-props",
        "-D", "PUBLISH", "user-property", "color", "blue",
        "-D", "PUBLISH", "content-type", "text/plain",
        "-D", "PUBLISH", "message-expiry-interval", "60",
        "-D", "PUBLISH", "payload-format-indicator", "1",
        "-D", "PUBLISH", "response-topic", "clp/reply",
        version=V5,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (line,) = s.messages(1)
    user, ctype, expiry, pfi, resp, payload = line.split("|")
    assert (user, ctype, pfi, resp, payload) == ("color:blue", "text/plain", "1", "clp/reply", "with-props"), line
    assert 58 <= int(expiry) <= 60, line
    m = paho_sub.recv()
    assert m.props.get("user_properties") == [("color", "blue")] and m.props.get("content_type") == "text/plain", m.props
    # and a paho MQTT 5 publish is printed by the CLI with its properties
    pub = made.connected("clp-pub")
    pub.publish("clp/t", "from-paho", qos=1, properties=pub_props(UserProperty=[("a", "1")], ContentType="x/y"))
    (line,) = s.messages(1)
    assert line.split("|")[:2] == ["a:1", "x/y"] and line.endswith("|from-paho"), line


@BOTH
def test_cli_persistent_session(broker: Broker, made: Made, version: int):
    """mosquitto_sub -c -i ID keeps its session: QoS 1 messages sent while it is away are printed on return."""
    cid = f"cli-persist-{version}"
    extra = ["-x", "3600"] if version == V5 else []
    first = cli_sub_run(broker, "-c", "-i", cid, "-q", "1", "-t", "clps/t", "-E", *extra, version=version)
    assert first.returncode == 0, (first.stdout, first.stderr)
    for k in range(3):
        out = cli_pub(broker, "-t", "clps/t", "-q", "1", "-m", f"m{k}", version=version)
        assert out.returncode == 0, out.stderr
    again = cli_sub_run(broker, "-c", "-i", cid, "-q", "1", "-t", "clps/t", "-C", "3", "-W", "5", *extra, version=version)
    assert again.returncode == 0 and again.stdout.splitlines() == ["m0", "m1", "m2"], (again.stdout, again.stderr)


@BOTH
def test_cli_will(broker: Broker, made: Made, version: int):
    """mosquitto_sub --will-topic: SIGKILL sends the will; SIGTERM sends DISCONNECT (v5: reason 0x04, so the will too)."""
    watcher = made.connected("clw-watch")
    watcher.subscribe(("clw/#", 1))
    subs = {}
    for name in ("killed", "termed"):
        subs[name] = made.cli_sub("-t", "clw-none/x", "-i", f"clw-{name}", "--will-topic", f"clw/{name}",
                                  "--will-payload", name, "--will-qos", "1", version=version)  # fmt: skip
    for s in subs.values():
        s.wait_subscribed()
    time.sleep(0.2)  # let mosquitto_sub go idle: its signal handler disconnects from inside the handler
    subs["termed"].signal(signal.SIGTERM)
    assert subs["termed"].wait() == 0
    assert any("sending DISCONNECT" in line for line in subs["termed"].all), subs["termed"].all
    subs["killed"].signal(signal.SIGKILL)
    subs["killed"].wait()
    # mosquitto_sub disconnects MQTT 5 sessions with reason 0x04 "disconnect with will message"
    want = {"clw/killed"} | ({"clw/termed"} if version == V5 else set())
    got = watcher.recv_n(len(want))
    assert {m.topic for m in got} == want and all(m.payload == m.topic.split("/")[1].encode() for m in got), got
    watcher.assert_quiet()


# =====================================================================
# Herald only: users, tokens, grants, anonymous
# =====================================================================
def admin_conn(b: Broker) -> Connection:
    conn = Connection(b.server.http_url)
    resp = conn.authenticate("admin", ADMIN_PASSWORD)
    assert resp.status_code == 201 and conn.token, f"admin login: {resp.status_code} {resp.text!r}"
    return conn


def make_user(admin: Connection, name: str, password: str, grants: list[tuple[str, str, str]] = ()) -> None:
    """Create a user and grant it `(permission, bucket, stream)` (get = read, put = write)."""
    resp = admin.create_user(name, password)
    assert resp.status_code == 201, f"create user {name}: {resp.status_code} {resp.text!r}"
    for perm, bucket, stream in grants:
        resp = admin.grant(name, perm, bucket, stream)
        assert resp.status_code == 200, f"grant {perm} {bucket}/{stream}: {resp.status_code} {resp.text!r}"


def session_token(b: Broker, name: str, password: str) -> str:
    conn = Connection(b.server.http_url)
    resp = conn.authenticate(name, password)
    assert resp.status_code == 201 and conn.token, f"login {name}: {resp.status_code} {resp.text!r}"
    return conn.token


@BOTH
def test_herald_user_password_and_session_token(herald_broker: Broker, hmade: Made, version: int):
    """A Herald user logs in with its password or a POST /sessions token; a wrong password or unknown user is refused."""
    b = herald_broker
    make_user(admin_conn(b), "bob", "bob-password", [("get", "b1", "s1"), ("put", "b1", "s1")])
    token = session_token(b, "bob", "bob-password")
    with_pw = hmade.client("bob-pw", version=version, username="bob", password="bob-password")
    assert with_pw.connect().rc == 0
    with_token = hmade.client("bob-token", version=version, username="bob", password=token)
    assert with_token.connect().rc == 0
    assert with_token.subscribe(("b1/s1", 1)) == [1]
    assert with_pw.publish("b1/s1", "from-bob", qos=1) == 0
    assert with_token.recv().payload == b"from-bob"
    refused = RC_BAD_CREDENTIALS
    for user, pw in (("bob", "wrong"), ("nobody", "bob-password"), ("admin", token)):
        c = hmade.client(f"bad-{user}", version=version, username=user, password=pw)
        assert c.connect(expect_rc=None).rc == refused, (user, pw)
        c.wait_closed()
    r = hmade.raw()
    r.send(enc_connect("bad-raw", version=version, username="bob", password="wrong"))
    pkts = r.read_until_closed()
    assert pkts and pkts[0].connack(version)[1] == (RC_BAD_CREDENTIALS if version == V5 else RC3_BAD_CREDENTIALS)
    # mosquitto_pub with the token
    out = cli_pub(b, "-t", "b1/s1", "-q", "1", "-m", "cli-token", version=version, username="bob", password=token)
    assert out.returncode == 0, out.stderr
    assert with_token.recv().payload == b"cli-token"


@BOTH
def test_herald_anonymous_gets_anonymous_grants(herald_broker: Broker, hmade: Made, version: int):
    """Anonymous (loopback) is accepted with the `anonymous` role: read on bucket `public` only, no write."""
    anon = hmade.client("anon", version=version, username=None, password=None)
    assert anon.connect().rc == 0
    denied = RC_NOT_AUTHORIZED if version == V5 else SUBACK_FAILURE_V3
    assert anon.subscribe(("public/news", 1), ("private/x", 1)) == [1, denied]
    admin = hmade.connected("anon-admin", version=V5)
    admin.publish("public/news", "hello anon", qos=1)
    admin.publish("private/x", "secret", qos=1)
    assert anon.recv().payload == b"hello anon"
    anon.assert_quiet()
    if version == V5:
        assert anon.publish("public/news", "nope", qos=1) == RC_NOT_AUTHORIZED
    else:
        anon.publish("public/news", "nope", qos=1, wait=False)
        anon.wait_closed()


@BOTH
def test_herald_subscribe_without_read_rights(herald_broker: Broker, hmade: Made, version: int):
    """SUBACK refuses (0x80 v3.1.1 / 0x87 v5) each filter the user may not read, granting the others."""
    make_user(admin_conn(herald_broker), "rita", "rita-password", [("get", "b1", "s1")])
    c = hmade.client("rita", version=version, username="rita", password="rita-password")
    c.connect()
    denied = RC_NOT_AUTHORIZED if version == V5 else SUBACK_FAILURE_V3
    assert c.subscribe(("b1/s1", 1), ("b2/s2", 1), ("b1/other", 2)) == [1, denied, denied]
    admin = hmade.connected("rita-admin")
    for t in ("b2/s2", "b1/other", "b1/s1"):
        admin.publish(t, t, qos=1)
    m = c.recv()
    assert (m.topic, m.payload) == ("b1/s1", b"b1/s1")
    c.assert_quiet()


def test_herald_publish_without_write_rights(herald_broker: Broker, hmade: Made):
    """Publish without write: v5 PUBACK/PUBREC 0x87 and DISCONNECT 0x87 for QoS 0; v3.1.1 the connection is closed."""
    b = herald_broker
    make_user(admin_conn(b), "reader", "reader-password", [("get", "b1", "s1")])
    login = {"username": "reader", "password": "reader-password"}
    watch = hmade.connected("wr-watch")
    watch.subscribe(("b1/#", 2))
    # v5 QoS 1 through paho
    c = hmade.client("wr-paho", username="reader", password="reader-password")
    c.connect()
    assert c.publish("b1/s1", "q1", qos=1) == RC_NOT_AUTHORIZED
    # v5 QoS 2 on a raw socket: PUBREC 0x87 ends the exchange
    r = hmade.raw()
    r.connect("wr-q2", **login)
    r.send(enc_publish("b1/s1", b"q2", qos=2, pid=5))
    rec = r.read()
    assert rec is not None and rec.ptype == PUBREC and rec.reason()[:2] == (5, RC_NOT_AUTHORIZED), rec
    # v5 QoS 0: DISCONNECT 0x87, then close
    r = hmade.raw()
    r.connect("wr-q0", **login)
    r.send(enc_publish("b1/s1", b"q0", qos=0))
    pkts = r.read_until_closed()
    assert [p.ptype for p in pkts] == [DISCONNECT] and pkts[0].reason()[1] == RC_NOT_AUTHORIZED, pkts
    # v3.1.1, any QoS: closed without an acknowledgement
    for qos in (0, 1, 2):
        r = hmade.raw()
        r.connect(f"wr-v3-{qos}", version=V311, **login)
        r.send(enc_publish("b1/s1", f"v3-{qos}".encode(), qos=qos, pid=3, version=V311))
        pkts = r.read_until_closed()
        assert pkts == [], (qos, pkts)
    watch.assert_quiet()
    # reading is still allowed
    assert c.subscribe(("b1/s1", 1)) == [1]
    watch.publish("b1/s1", "for-reader", qos=1)
    assert c.recv().payload == b"for-reader"


# =====================================================================
# Herald only: cross-protocol with the IorioDB API
# =====================================================================
def stream_entries(b: Broker, bucket: str, stream: str) -> list[dict]:
    resp = admin_conn(b).query(bucket, stream, limit=10, from_=1)
    assert resp.status_code == 200, f"GET /streams/{bucket}/{stream}: {resp.status_code} {resp.text!r}"
    return sorted(resp.json(), key=lambda e: e["meta"]["id"])


def test_herald_mqtt_publish_lands_in_stream(herald_broker: Broker, hmade: Made):
    """MQTT QoS 1 publishes on b1/s1 are events of IorioDB stream b1/s1 (text, base64 bytes, JSON by content type)."""
    b = herald_broker
    v3 = hmade.connected("xs-v3", version=V311)
    v5 = hmade.connected("xs-v5")
    v3.publish("b1/s1", "plain text", qos=1)
    v3.publish("b1/s1", b"\xff\x00\xfe", qos=1)
    v3.publish("b1/s1", '{"a": 1}', qos=1)
    v5.publish("b1/s1", '{"a": 2}', qos=1, properties=pub_props(ContentType="application/json"))
    v5.publish("b1/s1", "note", qos=1, properties=pub_props(ContentType="text/plain"))
    entries = stream_entries(b, "b1", "s1")
    assert [e["meta"]["id"] for e in entries] == [1, 2, 3, 4, 5], entries
    text, binary, json_v3, json_v5, note = entries
    assert text["data"] == "plain text" and text["meta"].get("ct") == "application/octet-stream", text
    assert binary["meta"].get("enc") == "base64" and base64.b64decode(binary["data"]) == b"\xff\x00\xfe", binary
    assert json_v3["data"] == '{"a": 1}' and json_v3["meta"].get("ct") == "application/octet-stream", json_v3
    assert json_v5["data"] == {"a": 2}, json_v5
    assert note["data"] == "note" and note["meta"].get("ct") == "text/plain", note


def test_herald_bang_topic_is_stream_alias(herald_broker: Broker, hmade: Made):
    """MQTT topic `b1!s1` is accepted as an alias of `b1/s1`."""
    c = hmade.connected("bang")
    assert c.publish("b1!s1", "via-bang", qos=1) == 0
    entries = stream_entries(herald_broker, "b1", "s1")
    assert [e["data"] for e in entries] == ["via-bang"], entries


def test_herald_sse_listener_sees_mqtt_publish(herald_broker: Broker, hmade: Made):
    """An SSE /listen?s=b1:s1 client (sseclient-py, jwt= token) receives an MQTT publish."""
    admin = admin_conn(herald_broker)
    subs = Subscriptions().add("b1", "s1", 1)
    resp = admin.listen_sse(subs, timeout=IO_TIMEOUT)
    try:
        assert resp.status_code == 200, f"{resp.status_code} {resp.text[:200]!r}"
        c = hmade.connected("sse-pub")
        c.publish("b1/s1", "to-sse", qos=1)
        try:
            for event in sseclient.SSEClient(resp).events():
                batch = json.loads(event.data)
                hits = [e for e in batch if e["meta"].get("stream") == "s1"]
                if hits:
                    assert hits[0]["data"] == "to-sse" and hits[0]["meta"]["bucket"] == "b1", hits
                    return
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise AssertionError(f"SSE: no event within {IO_TIMEOUT}s") from exc
        raise AssertionError("SSE stream ended without the MQTT event")
    finally:
        resp.close()


def test_herald_http_post_reaches_mqtt_subscribers(herald_broker: Broker, hmade: Made):
    """A JSON event POSTed to /streams/b1/s1 reaches MQTT 3.1.1 and 5 subscribers of b1/s1 as its JSON bytes."""
    subs = []
    for version in (V311, V5):
        c = hmade.connected(f"hp-{version}", version=version)
        assert c.subscribe(("b1/s1", 1)) == [1]
        subs.append(c)
    body = {"x": 1, "text": "ünïcode", "list": [1, 2]}
    resp = admin_conn(herald_broker).send("b1", "s1", body)
    assert resp.status_code == 201, resp.text
    for c in subs:
        m = c.recv()
        assert m.topic == "b1/s1" and json.loads(m.payload) == body, m


@BOTH
def test_herald_persistent_session_survives_restart(herald_broker: Broker, hmade: Made, version: int):
    """A persistent session (subscription and 3 queued QoS 1 messages) survives a Herald restart."""
    b = herald_broker
    props = connect_props(SessionExpiryInterval=3600) if version == V5 else None
    c = Client(b, "restart-client", version=version, clean=False)
    try:
        c.connect(properties=props)
        assert c.subscribe(("b1/s1", 1)) == [1]
        c.disconnect()
    finally:
        c.close()
    pub = Client(b, "restart-pub", version=version)
    try:
        pub.connect()
        for k in range(3):
            pub.publish("b1/s1", f"r{k}", qos=1)
        pub.disconnect()
    finally:
        pub.close()
    b.server.restart()
    b.refresh()
    again = hmade.client("restart-client", version=version, clean=False)
    assert again.connect(properties=props).session_present is True
    assert payloads(again.recv_n(3)) == [b"r0", b"r1", b"r2"]
    again.assert_quiet()


@BOTH
def test_herald_cli_persistent_session_survives_restart(herald_broker: Broker, version: int):
    """mosquitto_sub -c -i ID: QoS 1 messages published before a Herald restart are printed after it."""
    b = herald_broker
    cid = f"cli-restart-{version}"
    extra = ["-x", "3600"] if version == V5 else []
    first = cli_sub_run(b, "-c", "-i", cid, "-q", "1", "-t", "clrs/t", "-E", *extra, version=version)
    assert first.returncode == 0, (first.stdout, first.stderr)
    for k in range(3):
        out = cli_pub(b, "-t", "clrs/t", "-q", "1", "-m", f"m{k}", version=version)
        assert out.returncode == 0, out.stderr
    b.server.restart()
    b.refresh()
    again = cli_sub_run(b, "-c", "-i", cid, "-q", "1", "-t", "clrs/t", "-C", "3", "-W", "5", *extra, version=version)
    assert again.returncode == 0 and again.stdout.splitlines() == ["m0", "m1", "m2"], (again.stdout, again.stderr)


def metric_value(text: str, name: str) -> float | None:
    """The value of the unlabelled sample `name` in a Prometheus text page, if present."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return float(value)
    return None


def test_herald_mqtt_publish_metrics(herald_factory):
    """herald_mqtt_publish_{received,sent}_total count every PUBLISH in and out (counted
    once per read and once per write, not per packet: the totals must still be exact)."""
    server: HeraldServer = herald_factory(
        "--mqtt", "127.0.0.1:0", icepeak=False, env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD}
    )
    host, port = server.ready["mqtt"].rsplit(":", 1)
    made = Made(Broker("herald", host, int(port), "admin", ADMIN_PASSWORD, server=server))
    try:
        subs = [made.connected("m-sub-v3", version=V311), made.connected("m-sub-v5")]
        subs[0].subscribe("m/t", qos=0)
        subs[1].subscribe("m/t", qos=1)
        pub = made.connected("m-pub")
        for i in range(4):
            pub.publish("m/t", f"q0-{i}", qos=0)
        for i in range(2):
            pub.publish("m/t", f"q1-{i}", qos=1)
        for sub in subs:
            assert sorted(m.payload for m in sub.recv_n(6)) == sorted(
                [f"q0-{i}".encode() for i in range(4)] + [f"q1-{i}".encode() for i in range(2)]
            )
        want = {"herald_mqtt_publish_received_total": 6.0, "herald_mqtt_publish_sent_total": 12.0}
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            text = requests.get(server.metrics(), timeout=IO_TIMEOUT).text
            got = {name: metric_value(text, name) for name in want}
            if got == want:
                break
            assert time.monotonic() < deadline, f"metrics {got}, expected {want}"
            time.sleep(0.05)
    finally:
        made.close()


@BOTH
def test_herald_mqtt_over_websocket(herald_broker: Broker, hmade: Made, version: int):
    """MQTT over WebSocket at /mqtt on the HTTP listener is the same broker as the TCP listener."""
    b = herald_broker
    host, port = b.server.ready["http"].rsplit(":", 1)
    ws = Client(b, f"ws-client-{version}", version=version, websocket=(host, int(port)))
    try:
        ws.connect()
        ws.subscribe(("wsb/t", 1))
        tcp = hmade.connected(f"tcp-pub-{version}", version=version)
        tcp.publish("wsb/t", b"over-tcp", qos=1)
        m = ws.recv()
        assert (m.topic, m.payload, m.qos) == ("wsb/t", b"over-tcp", 1), m
        ws.publish("wsb/t", b"over-ws", qos=1)
        assert ws.recv().payload == b"over-ws"
    finally:
        ws.close()
    # A plain GET (no upgrade) or another subprotocol is refused with a JSON error.
    r = requests.get(f"http://{host}:{port}/mqtt", timeout=5)
    assert r.status_code == 400 and "error" in r.json(), r.text


def test_herald_mqtt_over_tls(herald_factory, tmp_path):
    """--mqtt-tls-cert/--mqtt-tls-key: paho and mosquitto_pub/sub over TLS; plain MQTT is refused."""
    import ssl
    import socket

    cert, key = make_cert(tmp_path, "mqtt")
    server = herald_factory(
        "--mqtt", "127.0.0.1:0", "--mqtt-tls-cert", str(cert), "--mqtt-tls-key", str(key),
        env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )  # fmt: skip
    host, port = server.ready["mqtt"].rsplit(":", 1)
    b = Broker(kind="herald", host=host, port=int(port), username="admin", password=ADMIN_PASSWORD, server=server)
    sub = Client(b, "tls-sub", version=V5)
    sub.c.tls_set(ca_certs=str(cert), cert_reqs=ssl.CERT_REQUIRED)
    try:
        sub.connect()
        sub.subscribe(("tls/t", 1))
        out = subprocess.run(
            [tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", port, "--cafile", str(cert),
             "-u", "admin", "-P", ADMIN_PASSWORD, "-t", "tls/t", "-m", "secure", "-q", "1"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        m = sub.recv()
        assert (m.topic, m.payload) == ("tls/t", b"secure"), m
    finally:
        sub.close()
    # A plain MQTT CONNECT on the TLS port gets no CONNACK: the connection is closed.
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(enc_connect("plain", version=V5))
        s.settimeout(5)
        try:
            data = s.recv(64)
        except (ConnectionResetError, socket.timeout):
            data = b""
        assert not data.startswith(b"\x20"), data


def test_herald_mqtt_over_secure_websocket(herald_factory, tmp_path):
    """--http-tls-cert/--http-tls-key: paho over wss:///mqtt; the HTTP API over HTTPS too."""
    import ssl

    cert, key = make_cert(tmp_path, "https")
    server = herald_factory(
        "--mqtt", "127.0.0.1:0", "--http-tls-cert", str(cert), "--http-tls-key", str(key),
        env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD},
    )  # fmt: skip
    host, port = server.ready["http"].rsplit(":", 1)
    r = requests.get(f"https://{host}:{port}/ping", verify=str(cert), timeout=5)
    assert r.status_code == 200, r.text
    mhost, mport = server.ready["mqtt"].rsplit(":", 1)
    b = Broker(kind="herald", host=mhost, port=int(mport), username="admin", password=ADMIN_PASSWORD, server=server)
    ws = Client(b, "wss-client", version=V5, websocket=(host, int(port)))
    ws.c.tls_set(ca_certs=str(cert), cert_reqs=ssl.CERT_REQUIRED)
    try:
        ws.connect()
        ws.subscribe(("wss/t", 1))
        tcp = Client(b, "wss-tcp-pub", version=V5)
        try:
            tcp.connect()
            tcp.publish("wss/t", b"through-tls", qos=1)
        finally:
            tcp.close()
        m = ws.recv()
        assert (m.topic, m.payload) == ("wss/t", b"through-tls"), m
    finally:
        ws.close()
    # Plain HTTP on the TLS port gets no answer.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{host}:{port}/ping", timeout=5)
