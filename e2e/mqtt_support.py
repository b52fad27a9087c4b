"""Helpers for the MQTT interop suite (test_mqtt_interop.py).

* ``Mosquitto``   – a real Debian ``mosquitto`` broker on an ephemeral
  127.0.0.1 port, with a generated config and password file in a temp dir.
* ``Broker``      – what a test connects to (host, port, credentials, kind),
  for either Mosquitto or Herald (``--mqtt 127.0.0.1:0``).
* ``Client``      – a synchronous wrapper around the real PyPI ``paho-mqtt``
  2.x client (``loop_start`` thread, callbacks into queues, a timeout on every
  wait, never an automatic reconnect).
* ``RawConn`` and the ``enc_*``/``parse_*`` functions – a tiny MQTT codec on a
  plain socket, for what paho cannot or will not send (garbage, oversize
  packets, no DISCONNECT, PUBREC reason codes).
* ``cli_*`` / ``CliSub`` – Debian's ``mosquitto_pub`` / ``mosquitto_sub`` run
  as subprocesses.

Nothing here talks to anything but 127.0.0.1, and nothing uses port 1883.
The tools come from ``scripts/setup-mqtt-tools.sh``.
"""

from __future__ import annotations

import getpass
import queue
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

#: Seconds for one wait (CONNACK, SUBACK, PUBACK, a message, a process).
IO_TIMEOUT = 5.0
#: How long a "nothing may arrive" check listens (everything is on loopback).
QUIET_PERIOD = 0.2

V311 = 4
V5 = 5

MOSQUITTO_USER = "mqtt-e2e"
MOSQUITTO_PASSWORD = "mqtt-e2e-secret"
#: The Maximum Packet Size our Mosquitto advertises (``max_packet_size``).
MOSQUITTO_MAX_PACKET = 65536

SETUP_HINT = "run `bash scripts/setup-mqtt-tools.sh` (Debian packages mosquitto, mosquitto-clients)"


def tool(name: str) -> str:
    """Absolute path of a mosquitto tool, also looking in /usr/sbin."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise FileNotFoundError(f"{name} not found; {SETUP_HINT}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# =====================================================================
# Mosquitto broker
# =====================================================================
class Mosquitto:
    """A `mosquitto -c CONF` process on an ephemeral loopback port. Clients
    must log in as MOSQUITTO_USER (``allow_anonymous false``)."""

    def __init__(self, extra_conf: Sequence[str] = ()) -> None:
        self.binary = tool("mosquitto")
        self.workdir = Path(tempfile.mkdtemp(prefix="mosquitto-e2e-"))
        self.extra_conf = list(extra_conf)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self.starts = 0
        passwd = self.workdir / "passwd"
        out = subprocess.run(
            [tool("mosquitto_passwd"), "-b", "-c", str(passwd), MOSQUITTO_USER, MOSQUITTO_PASSWORD],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, f"mosquitto_passwd: {out.stdout}{out.stderr}"
        self.passwd = passwd

    @property
    def log_path(self) -> Path:
        return self.workdir / f"mosquitto-{self.starts}.log"

    def config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.passwd}",
            "persistence false",
            f"max_packet_size {MOSQUITTO_MAX_PACKET}",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            # Never switch to the `mosquitto` system user (it could not read
            # this temp dir); as non-root this is a no-op anyway.
            f"user {getpass.getuser()}",
            *self.extra_conf,
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> "Mosquitto":
        assert self.proc is None or self.proc.poll() is not None, "mosquitto already running"
        last_error = ""
        for _ in range(5):  # a port picked by free_port() may be taken meanwhile
            self.starts += 1
            self.port = free_port()
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(self.config())
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = self.log_path.read_text(errors="replace")
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.02)
            else:
                self.stop()
                raise RuntimeError(f"mosquitto did not listen on {self.port} within 10s:\n{self.logs()}")
        raise RuntimeError(f"mosquitto failed to start:\n{last_error}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def close(self, keep: bool = False) -> None:
        try:
            self.stop()
        finally:
            if not keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def logs(self, limit: int = 8000) -> str:
        parts = []
        for n in range(1, self.starts + 1):
            p = self.workdir / f"mosquitto-{n}.log"
            try:
                text = p.read_bytes()[-limit:].decode("utf-8", "replace")
            except OSError:
                continue
            parts.append(f"--- mosquitto start #{n} ({p}) ---\n{text}")
        return "\n".join(parts) or "<no mosquitto log>"


# =====================================================================
# the broker under test
# =====================================================================
@dataclass
class Broker:
    """One broker a test talks to. `username`/`password` have full rights
    (Mosquitto's password-file user, or Herald's `admin`)."""

    kind: str  # "mosquitto" | "herald"
    host: str
    port: int
    username: Optional[str]
    password: Optional[str]
    server: Any = None  # herald_e2e.HeraldServer for kind == "herald"
    mosquitto: Optional[Mosquitto] = None

    @property
    def is_herald(self) -> bool:
        return self.kind == "herald"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def refresh(self) -> None:
        """Re-read the MQTT address (Herald's ports may change on restart)."""
        if self.server is not None:
            self.host, port = self.server.ready["mqtt"].rsplit(":", 1)
            self.port = int(port)
        elif self.mosquitto is not None:
            self.port = self.mosquitto.port


# =====================================================================
# paho-mqtt wrapper
# =====================================================================
_DEFAULT = object()

#: paho property attribute -> the short name used in `props()` dicts.
PROP_NAMES = {
    "PayloadFormatIndicator": "payload_format",
    "MessageExpiryInterval": "message_expiry",
    "ContentType": "content_type",
    "ResponseTopic": "response_topic",
    "CorrelationData": "correlation_data",
    "SubscriptionIdentifier": "subscription_id",
    "SessionExpiryInterval": "session_expiry",
    "AssignedClientIdentifier": "assigned_client_id",
    "ServerKeepAlive": "server_keep_alive",
    "ReasonString": "reason_string",
    "ReceiveMaximum": "receive_maximum",
    "TopicAliasMaximum": "topic_alias_maximum",
    "TopicAlias": "topic_alias",
    "MaximumQoS": "maximum_qos",
    "RetainAvailable": "retain_available",
    "UserProperty": "user_properties",
    "MaximumPacketSize": "maximum_packet_size",
    "WildcardSubscriptionAvailable": "wildcard_available",
    "SubscriptionIdentifierAvailable": "subscription_id_available",
    "SharedSubscriptionAvailable": "shared_available",
    "ServerReference": "server_reference",
}


def props(p: Optional[Properties]) -> dict[str, Any]:
    """The properties that are set, as {short_name: value}."""
    out: dict[str, Any] = {}
    if p is None:
        return out
    for attr, name in PROP_NAMES.items():
        if hasattr(p, attr):
            value = getattr(p, attr)
            if name == "user_properties":
                value = [tuple(kv) for kv in value]
            out[name] = value
    return out


def make_props(packet_type: int, **values: Any) -> Properties:
    """`make_props(PacketTypes.PUBLISH, ContentType="text/plain", UserProperty=[("k","v")])`."""
    p = Properties(packet_type)
    for attr, value in values.items():
        setattr(p, attr, value)
    return p


@dataclass
class Connack:
    rc: int
    session_present: bool
    props: dict[str, Any]


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    props: dict[str, Any]
    dup: bool = False


@dataclass
class Disconnected:
    rc: int  # the server's DISCONNECT reason code, or paho's mapping of a lost connection
    from_server: bool  # a DISCONNECT packet was received (MQTT 5)
    props: dict[str, Any] = field(default_factory=dict)


class Client:
    """A paho-mqtt 2.x client with synchronous, bounded calls.

    `username`/`password` default to the broker's full-rights login; pass
    `username=None` for an anonymous connection. The network loop runs in
    paho's own thread (`loop_start`) with `reconnect_on_failure=False`, so a
    closed connection stays closed and is reported by `wait_closed`.
    """

    def __init__(
        self,
        broker: Broker,
        client_id: str = "",
        *,
        version: int = V5,
        clean: bool = True,
        keepalive: int = 30,
        username: Any = _DEFAULT,
        password: Any = _DEFAULT,
        manual_ack: bool = False,
        websocket: Optional[tuple[str, int]] = None,
    ) -> None:
        """`websocket=(host, port)` speaks MQTT over WebSocket to `ws://host:port/mqtt`."""
        self.broker = broker
        self.websocket = websocket
        self.version = version
        self.clean = clean
        self.keepalive = keepalive
        self.client_id = client_id
        protocol = paho.MQTTv5 if version == V5 else paho.MQTTv311
        self.c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if version == V5 else clean,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            self.c.ws_set_options(path="/mqtt")
        user = broker.username if username is _DEFAULT else username
        pw = broker.password if password is _DEFAULT else password
        if user is not None:
            self.c.username_pw_set(user, pw)
        self.messages: "queue.Queue[Msg]" = queue.Queue()
        self._connack: "queue.Queue[Connack]" = queue.Queue()
        self._acks: dict[int, tuple[threading.Event, list]] = {}
        self._acks_lock = threading.Lock()
        self.closed = threading.Event()
        self.disconnect_info: Optional[Disconnected] = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_ack
        self.c.on_unsubscribe = self._on_ack
        self.c.on_publish = self._on_publish
        self.c.on_disconnect = self._on_disconnect
        self._started = False

    # ------------------------------------------------------------ callbacks
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        self._connack.put(Connack(int(reason.value), bool(flags.session_present), props(properties)))

    def _on_message(self, client, userdata, m: paho.MQTTMessage) -> None:
        self.messages.put(
            Msg(
                topic=m.topic,
                payload=bytes(m.payload),
                qos=m.qos,
                retain=bool(m.retain),
                mid=m.mid,
                props=props(getattr(m, "properties", None)),
                dup=bool(m.dup),
            )
        )

    def _waiter(self, mid: int) -> tuple[threading.Event, list]:
        with self._acks_lock:
            return self._acks.setdefault(mid, (threading.Event(), []))

    def _on_ack(self, client, userdata, mid, reason_codes, properties) -> None:
        ev, box = self._waiter(mid)
        box.append(([int(rc.value) for rc in reason_codes], props(properties)))
        ev.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ev, box = self._waiter(mid)
        box.append((int(reason_code.value), props(properties)))
        ev.set()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self.disconnect_info is None or flags.is_disconnect_packet_from_server:
            self.disconnect_info = Disconnected(
                int(reason.value), bool(flags.is_disconnect_packet_from_server), props(properties)
            )
        self.closed.set()

    # ------------------------------------------------------------ calls
    def connect(
        self,
        *,
        properties: Optional[Properties] = None,
        will: Optional[dict[str, Any]] = None,
        expect_rc: Optional[int] = 0,
        timeout: float = IO_TIMEOUT,
    ) -> Connack:
        """CONNECT and wait for the CONNACK. `will` = kwargs of paho's
        `will_set` (topic, payload, qos, retain, properties). Asserts the
        CONNACK's code equals `expect_rc` unless that is None."""
        if will is not None:
            self.c.will_set(**will)
        kw: dict[str, Any] = {"keepalive": self.keepalive}
        if self.version == V5:
            kw["clean_start"] = self.clean
            kw["properties"] = properties
        host, port = self.websocket or (self.broker.host, self.broker.port)
        self.c.connect(host, port, **kw)
        self.c.loop_start()
        self._started = True
        try:
            ack = self._connack.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id or 'client'}: no CONNACK within {timeout}s") from None
        if expect_rc is not None:
            assert ack.rc == expect_rc, f"CONNACK code {ack.rc:#x}, expected {expect_rc:#x}: {ack}"
        return ack

    def subscribe(
        self,
        *filters: Any,
        qos: int = 0,
        properties: Optional[Properties] = None,
        timeout: float = IO_TIMEOUT,
    ) -> list[int]:
        """Subscribe to filters (each a string, `(filter, qos)` or
        `(filter, SubscribeOptions)`); returns the SUBACK codes."""
        topics: list[tuple[str, Any]] = []
        for f in filters:
            t, o = (f, qos) if isinstance(f, str) else f
            if self.version == V5 and isinstance(o, int):
                o = SubscribeOptions(qos=o)
            topics.append((t, o))
        rc, mid = self.c.subscribe(topics, properties=properties)
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"subscribe: {rc}"
        codes, _ = self._wait_ack(mid, "SUBACK", timeout)
        return codes

    def unsubscribe(self, *filters: str, timeout: float = IO_TIMEOUT) -> list[int]:
        rc, mid = self.c.unsubscribe(list(filters))
        assert rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"unsubscribe: {rc}"
        codes, _ = self._wait_ack(mid, "UNSUBACK", timeout)
        return codes

    def _wait_ack(self, mid: Optional[int], what: str, timeout: float) -> Any:
        assert mid is not None
        ev, box = self._waiter(mid)
        if not ev.wait(timeout):
            raise AssertionError(f"no {what} for mid {mid} within {timeout}s (closed={self.closed.is_set()})")
        with self._acks_lock:
            self._acks.pop(mid, None)
        return box[0]

    def publish(
        self,
        topic: str,
        payload: bytes | str | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Optional[Properties] = None,
        *,
        wait: bool = True,
        timeout: float = IO_TIMEOUT,
    ) -> int:
        """Publish; with `wait`, block until PUBACK/PUBCOMP (QoS 1/2) or until
        written (QoS 0). Returns the reason code (0 for QoS 0 and v3.1.1)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if not wait:
            return 0
        assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS, f"publish {topic}: {info.rc}"
        code, _ = self._wait_ack(info.mid, "PUBACK/PUBCOMP", timeout)
        return code

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge a received message (with `manual_ack=True`)."""
        self.c.ack(mid, qos)

    def recv(self, timeout: float = IO_TIMEOUT) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id or 'client'}: no message within {timeout}s") from None

    def recv_n(self, n: int, timeout: float = IO_TIMEOUT) -> list[Msg]:
        """Exactly the next `n` messages (all within `timeout` overall)."""
        deadline = time.monotonic() + timeout
        got: list[Msg] = []
        while len(got) < n:
            left = deadline - time.monotonic()
            try:
                got.append(self.messages.get(timeout=max(left, 0.001)))
            except queue.Empty:
                raise AssertionError(
                    f"{self.client_id or 'client'}: {len(got)} of {n} messages within {timeout}s: "
                    f"{[(m.topic, m.payload) for m in got]}"
                ) from None
        return got

    def drain(self, quiet: float = QUIET_PERIOD) -> list[Msg]:
        """Every message until none arrives for `quiet` seconds."""
        got: list[Msg] = []
        while True:
            try:
                got.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return got

    def assert_quiet(self, timeout: float = QUIET_PERIOD) -> None:
        try:
            m = self.messages.get(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id or 'client'}: expected no message, got {m}")

    def wait_closed(self, timeout: float = IO_TIMEOUT) -> Disconnected:
        """Wait until the connection is gone; returns how it ended."""
        assert self.closed.wait(timeout), f"{self.client_id or 'client'}: connection still open after {timeout}s"
        assert self.disconnect_info is not None
        return self.disconnect_info

    def disconnect(self, reason: Optional[int] = None, properties: Optional[Properties] = None) -> None:
        """A normal DISCONNECT (optionally with an MQTT 5 reason code)."""
        rc = None
        if reason is not None:
            rc = paho.ReasonCode(PacketTypes.DISCONNECT, identifier=reason)
        self.c.disconnect(reasoncode=rc, properties=properties)
        self.closed.wait(IO_TIMEOUT)
        self._stop_loop()

    def drop(self) -> None:
        """Close the TCP connection without sending DISCONNECT (abnormal)."""
        sock = self.c.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.closed.wait(IO_TIMEOUT)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._started:
            self._started = False
            self.c.loop_stop()

    def close(self) -> None:
        """Idempotent cleanup (normal DISCONNECT when still connected)."""
        try:
            if not self.closed.is_set() and self.c.is_connected():
                self.c.disconnect()
                self.closed.wait(2)
        except Exception:  # noqa: BLE001 - best effort
            pass
        self._stop_loop()
        try:
            sock = self.c.socket()
            if sock is not None:
                sock.close()
        except Exception:  # noqa: BLE001
            pass


# =====================================================================
# raw MQTT codec
# =====================================================================
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# property id -> (name, type)
_PROPS = {
    0x01: ("payload_format", "byte"),
    0x02: ("message_expiry", "u32"),
    0x03: ("content_type", "str"),
    0x08: ("response_topic", "str"),
    0x09: ("correlation_data", "bin"),
    0x0B: ("subscription_id", "var"),
    0x11: ("session_expiry", "u32"),
    0x12: ("assigned_client_id", "str"),
    0x13: ("server_keep_alive", "u16"),
    0x15: ("auth_method", "str"),
    0x16: ("auth_data", "bin"),
    0x17: ("request_problem_info", "byte"),
    0x18: ("will_delay", "u32"),
    0x19: ("request_response_info", "byte"),
    0x1A: ("response_info", "str"),
    0x1C: ("server_reference", "str"),
    0x1F: ("reason_string", "str"),
    0x21: ("receive_maximum", "u16"),
    0x22: ("topic_alias_maximum", "u16"),
    0x23: ("topic_alias", "u16"),
    0x24: ("maximum_qos", "byte"),
    0x25: ("retain_available", "byte"),
    0x26: ("user_properties", "pair"),
    0x27: ("maximum_packet_size", "u32"),
    0x28: ("wildcard_available", "byte"),
    0x29: ("subscription_id_available", "byte"),
    0x2A: ("shared_available", "byte"),
}
_PROP_IDS = {name: (pid, typ) for pid, (name, typ) in _PROPS.items()}


def enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def enc_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def enc_props(values: Optional[dict[str, Any]]) -> bytes:
    body = bytearray()
    for name, value in (values or {}).items():
        pid, typ = _PROP_IDS[name]
        items = value if typ == "pair" else [value]
        for v in items:
            body.append(pid)
            if typ == "byte":
                body.append(v)
            elif typ == "u16":
                body += struct.pack("!H", v)
            elif typ == "u32":
                body += struct.pack("!I", v)
            elif typ == "var":
                body += enc_varint(v)
            elif typ in ("str", "bin"):
                body += enc_str(v)
            elif typ == "pair":
                body += enc_str(v[0]) + enc_str(v[1])
    return enc_varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + enc_varint(len(body)) + body


def enc_connect(
    client_id: str = "",
    *,
    version: int = V5,
    keepalive: int = 30,
    clean: bool = True,
    username: Optional[str] = None,
    password: Optional[str] = None,
    will: Optional[tuple[str, bytes, int, bool]] = None,
    will_props: Optional[dict[str, Any]] = None,
    properties: Optional[dict[str, Any]] = None,
    protocol_name: str = "MQTT",
) -> bytes:
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = enc_str(protocol_name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += enc_props(properties)
    body += enc_str(client_id)
    if will is not None:
        if version == V5:
            body += enc_props(will_props)
        body += enc_str(will[0]) + enc_str(will[1])
    if username is not None:
        body += enc_str(username)
    if password is not None:
        body += enc_str(password)
    return packet(CONNECT, 0, body)


def enc_publish(
    topic: str,
    payload: bytes,
    *,
    qos: int = 0,
    pid: int = 1,
    retain: bool = False,
    version: int = V5,
    properties: Optional[dict[str, Any]] = None,
) -> bytes:
    body = enc_str(topic)
    if qos:
        body += struct.pack("!H", pid)
    if version == V5:
        body += enc_props(properties)
    return packet(PUBLISH, (qos << 1) | (1 if retain else 0), body + payload)


def enc_subscribe(pid: int, filters: Iterable[tuple[str, int]], version: int = V5) -> bytes:
    body = struct.pack("!H", pid)
    if version == V5:
        body += enc_props(None)
    for f, opts in filters:
        body += enc_str(f) + bytes([opts])
    return packet(SUBSCRIBE, 0x02, body)


def enc_ack(ptype: int, pid: int, reason: Optional[int] = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP (PUBREL gets its fixed flags 0x02)."""
    body = struct.pack("!H", pid) + (bytes([reason]) if reason is not None else b"")
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def enc_disconnect(reason: Optional[int] = None, version: int = V5) -> bytes:
    if version != V5 or reason is None:
        return packet(DISCONNECT, 0, b"")
    return packet(DISCONNECT, 0, bytes([reason]))


def dec_varint(buf: bytes, i: int) -> tuple[int, int]:
    n, mult = 0, 1
    for _ in range(4):
        b = buf[i]
        i += 1
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return n, i
    raise ValueError("malformed variable byte integer")


def dec_str(buf: bytes, i: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", buf, i)
    return bytes(buf[i + 2 : i + 2 + n]), i + 2 + n


def dec_props(buf: bytes, i: int) -> tuple[dict[str, Any], int]:
    length, i = dec_varint(buf, i)
    end = i + length
    out: dict[str, Any] = {}
    while i < end:
        pid = buf[i]
        i += 1
        name, typ = _PROPS.get(pid, (f"0x{pid:02x}", "?"))
        if typ == "byte":
            v: Any = buf[i]
            i += 1
        elif typ == "u16":
            (v,) = struct.unpack_from("!H", buf, i)
            i += 2
        elif typ == "u32":
            (v,) = struct.unpack_from("!I", buf, i)
            i += 4
        elif typ == "var":
            v, i = dec_varint(buf, i)
        elif typ == "str":
            b, i = dec_str(buf, i)
            v = b.decode("utf-8", "replace")
        elif typ == "bin":
            v, i = dec_str(buf, i)
        elif typ == "pair":
            k, i = dec_str(buf, i)
            val, i = dec_str(buf, i)
            out.setdefault(name, []).append((k.decode(), val.decode()))
            continue
        else:
            raise ValueError(f"unknown property id {pid:#x}")
        out[name] = v
    return out, end


@dataclass
class Packet:
    ptype: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        names = [
            "RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
            "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH",
        ]
        return names[self.ptype]

    # ------------------------------------------------------------- decoders
    def connack(self, version: int = V5) -> tuple[bool, int, dict[str, Any]]:
        """(session_present, return/reason code, properties)."""
        assert self.ptype == CONNACK, f"expected CONNACK, got {self}"
        p: dict[str, Any] = {}
        if version == V5 and len(self.body) > 2:
            p, _ = dec_props(self.body, 2)
        return bool(self.body[0] & 1), self.body[1], p

    def reason(self, version: int = V5) -> tuple[Optional[int], int, dict[str, Any]]:
        """For PUBACK/PUBREC/PUBREL/PUBCOMP: (packet id, reason code, props)
        (reason 0 when omitted); for DISCONNECT: (None, reason, props)."""
        if self.ptype == DISCONNECT:
            if not self.body:
                return None, 0, {}
            p: dict[str, Any] = {}
            if len(self.body) > 1:
                p, _ = dec_props(self.body, 1)
            return None, self.body[0], p
        (pid,) = struct.unpack_from("!H", self.body, 0)
        if version != V5 or len(self.body) == 2:
            return pid, 0, {}
        p = dec_props(self.body, 3)[0] if len(self.body) > 3 else {}
        return pid, self.body[2], p

    def suback(self, version: int = V5) -> tuple[int, list[int]]:
        assert self.ptype in (SUBACK, UNSUBACK), f"expected SUBACK, got {self}"
        (pid,) = struct.unpack_from("!H", self.body, 0)
        i = 2
        if version == V5:
            _, i = dec_props(self.body, 2)
        return pid, list(self.body[i:])

    def publish(self, version: int = V5) -> tuple[str, Optional[int], dict[str, Any], bytes]:
        """(topic, packet id or None, properties, payload)."""
        assert self.ptype == PUBLISH, f"expected PUBLISH, got {self}"
        topic, i = dec_str(self.body, 0)
        pid = None
        if (self.flags >> 1) & 3:
            (pid,) = struct.unpack_from("!H", self.body, i)
            i += 2
        p: dict[str, Any] = {}
        if version == V5:
            p, i = dec_props(self.body, i)
        return topic.decode(), pid, p, bytes(self.body[i:])

    def __repr__(self) -> str:
        return f"<{self.name} flags={self.flags:#x} body={self.body[:64]!r}{'...' if len(self.body) > 64 else ''}>"


class RawConn:
    """A plain TCP connection speaking hand-made MQTT packets. `read()`
    returns the next Packet, or None once the server closed the connection;
    it fails the test when nothing happens within the timeout."""

    def __init__(self, broker: Broker, timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection(broker.address, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> "RawConn":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> bool:
        """Send; False when the server already closed/reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("raw MQTT: nothing from the server within the timeout (connection still open)")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("raw MQTT: nothing from the server within the timeout (connection still open)") from None
        except (ConnectionResetError, ConnectionAbortedError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read(self, timeout: float = IO_TIMEOUT) -> Optional[Packet]:
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                try:
                    length, i = dec_varint(self.buf, 1)
                except IndexError:
                    length, i = -1, 0
                if length >= 0 and len(self.buf) >= i + length:
                    first = self.buf[0]
                    pkt = Packet(first >> 4, first & 0x0F, bytes(self.buf[i : i + length]))
                    del self.buf[: i + length]
                    return pkt
            if self.eof or not self._fill(deadline):
                return None

    def read_until_closed(self, timeout: float = IO_TIMEOUT) -> list[Packet]:
        """Every packet until the server closes the connection (fails when it
        is still open after `timeout`)."""
        deadline = time.monotonic() + timeout
        got: list[Packet] = []
        while True:
            left = deadline - time.monotonic()
            try:
                pkt = self.read(max(left, 0.001))
            except AssertionError:
                raise AssertionError(
                    f"raw MQTT: connection still open after {timeout}s; received {got}"
                ) from None
            if pkt is None:
                return got
            got.append(pkt)

    def connect(self, client_id: str = "", *, version: int = V5, **kw: Any) -> tuple[bool, int, dict[str, Any]]:
        """Send CONNECT and read the CONNACK: (session_present, code, props)."""
        self.send(enc_connect(client_id, version=version, **kw))
        pkt = self.read()
        assert pkt is not None, "connection closed instead of CONNACK"
        return pkt.connack(version)


# =====================================================================
# mosquitto-clients
# =====================================================================
def cli_version(version: int) -> str:
    """`-V` spelling of Debian's mosquitto-clients 2.0.x."""
    return "mqttv5" if version == V5 else "mqttv311"


def cli_conn(
    broker: Broker, version: int = V311, username: Any = _DEFAULT, password: Any = _DEFAULT
) -> list[str]:
    """`-h H -p P -V ver [-u U -P PW]` for `broker`."""
    user = broker.username if username is _DEFAULT else username
    pw = broker.password if password is _DEFAULT else password
    args = ["-h", broker.host, "-p", str(broker.port), "-V", cli_version(version)]
    if user is not None:
        args += ["-u", user]
    if pw is not None:
        args += ["-P", pw]
    return args


def cli_pub(broker: Broker, *args: str, version: int = V311, timeout: float = 10, **kw: Any) -> subprocess.CompletedProcess:
    """Run `mosquitto_pub` to completion; returns the CompletedProcess (text)."""
    conn = cli_conn(broker, version, kw.pop("username", _DEFAULT), kw.pop("password", _DEFAULT))
    cmd = [tool("mosquitto_pub"), *conn, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def cli_sub_run(broker: Broker, *args: str, version: int = V311, timeout: float = 15, **kw: Any) -> subprocess.CompletedProcess:
    """Run `mosquitto_sub` to completion (give it -C and/or -W or -E)."""
    conn = cli_conn(broker, version, kw.pop("username", _DEFAULT), kw.pop("password", _DEFAULT))
    cmd = [tool("mosquitto_sub"), *conn, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


class CliSub:
    """A running `mosquitto_sub -d ...`: its stdout is read line by line in a
    thread. `-d` makes it print "received SUBACK", which `wait_subscribed`
    waits for; give it `-F` with a prefix (see MSG_PREFIX) so message lines
    are told apart from the debug ones. Line-buffered through `stdbuf -oL`."""

    MSG_PREFIX = "MSG|"

    def __init__(self, broker: Broker, *args: str, version: int = V311, **kw: Any) -> None:
        conn = cli_conn(broker, version, kw.pop("username", _DEFAULT), kw.pop("password", _DEFAULT))
        cmd = [tool("mosquitto_sub"), "-d", *conn, *args]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            cmd = [stdbuf, "-oL", "-eL", *cmd]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.all: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.all.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _next(self, deadline: float) -> Optional[str]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise queue.Empty
        return self.lines.get(timeout=left)

    def wait_for(self, pred, timeout: float = IO_TIMEOUT, what: str = "line") -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._next(deadline)
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: no {what} within {timeout}s; output so far: {self.all}") from None
            if line is None:
                raise AssertionError(f"mosquitto_sub exited ({self.proc.poll()}) before {what}; output: {self.all}")
            if pred(line):
                return line

    def wait_subscribed(self, timeout: float = IO_TIMEOUT) -> None:
        """Until `-d` printed the SUBACK ("Subscribed (mid: N): ..." follows it)."""
        self.wait_for(lambda s: s.startswith("Subscribed (mid"), timeout, "SUBACK")

    def messages(self, n: int, timeout: float = IO_TIMEOUT) -> list[str]:
        """The next `n` message lines (without MSG_PREFIX)."""
        got = []
        for _ in range(n):
            line = self.wait_for(lambda s: s.startswith(self.MSG_PREFIX), timeout, f"message {len(got) + 1} of {n}")
            got.append(line[len(self.MSG_PREFIX):])
        return got

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = IO_TIMEOUT) -> int:
        """Wait for the exit (and for all of its output to be read)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mosquitto_sub still running after {timeout}s; output: {self.all}") from None
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
