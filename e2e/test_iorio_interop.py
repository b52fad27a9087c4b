"""IorioDB interop: Herald's IorioDB-compatible API (on the `--http` listener)
driven over real sockets by `iorio_client.py` (written in the spirit of
IorioDB's `tools/iorio.py`, on `requests`), `websocket-client` and the SSE
parser `sseclient-py`.

Contract: shared/seed-contracts.md section 2 (2.2 sessions, 2.3 streams,
2.4 listing, 2.5 users/ACL, 2.6 /listen, 2.8 the Python tools), plus the
deliberate differences documented in crates/herald-transport-iorio/src/lib.rs
(WebSocket subscribe checks permission, /listen replays from disk, gap
markers, SSE resume ids).

What is modelled on which upstream tool:
* resttest.py  -> test_sessions, test_users, test_streams_*, test_grants_*
* patchtest.py -> test_patch_conflict_409_and_race
* apitest.py   -> test_apitest_style_load (bounded in time)
* iorio.Subscriptions / long-poll listen -> every /listen test

Every network wait has a timeout; worker threads are daemons and are joined
with a timeout, so a broken server fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import requests
import sseclient  # sseclient-py
import websocket  # websocket-client

from herald_e2e import IO_TIMEOUT, QUIET_PERIOD, HeraldServer, clean_env
from iorio_client import Connection, Subscriptions

ADMIN_PASSWORD = "herald-e2e-admin-password"
#: IorioDB gives every user the bucket `_user_<name>`; apitest.py writes to admin's.
ADMIN_BUCKET = "_user_admin"
#: Seconds a long-poll /listen is held before 204 (the server default is 60).
LONG_POLL_TIMEOUT = 2


# =====================================================================
# fixtures and helpers
# =====================================================================
@pytest.fixture
def iorio_factory(herald_factory) -> Callable[..., HeraldServer]:
    """Start a server with only the `--http` listener (where the IorioDB API
    lives) and user `admin` created from HERALD_ADMIN_PASSWORD."""

    def start(*extra_args: str, long_poll_timeout: int = LONG_POLL_TIMEOUT) -> HeraldServer:
        args = ["--long-poll-timeout", str(long_poll_timeout), *extra_args]
        return herald_factory(
            *args, icepeak=False, metrics=False, env={"HERALD_ADMIN_PASSWORD": ADMIN_PASSWORD}
        )

    return start


@pytest.fixture
def iorio(iorio_factory) -> HeraldServer:
    return iorio_factory()


def login(server: HeraldServer, username: str = "admin", password: str = ADMIN_PASSWORD) -> Connection:
    conn = Connection(server.http_url)
    resp = conn.authenticate(username, password)
    assert resp.status_code == 201, f"login {username}: {resp.status_code} {resp.text!r}"
    assert conn.token, f"login {username}: no token in {resp.text!r}"
    return conn


@pytest.fixture
def admin(iorio: HeraldServer) -> Connection:
    return login(iorio)


def describe(resp: requests.Response) -> str:
    return f"{resp.request.method} {resp.url.split('?')[0]} -> {resp.status_code} {resp.text[:300]!r}"


def assert_status(resp: requests.Response, status: int) -> requests.Response:
    assert resp.status_code == status, f"expected {status}: {describe(resp)}"
    return resp


def assert_json(resp: requests.Response, status: int, body: Any = None) -> Any:
    assert_status(resp, status)
    assert resp.headers.get("Content-Type", "").startswith("application/json"), (
        f"Content-Type {resp.headers.get('Content-Type')!r}: {describe(resp)}"
    )
    got = resp.json()
    if body is not None:
        assert got == body, f"body: {describe(resp)}, expected {body!r}"
    return got


def assert_error(resp: requests.Response, status: int, code: str) -> dict:
    """IorioDB's error shape `{"type": code, "reason": ...}`."""
    body = assert_json(resp, status)
    assert isinstance(body, dict) and body.get("type") == code and "reason" in body, (
        f"expected error type {code!r}: {describe(resp)}"
    )
    return body


def assert_no_perm(resp: requests.Response) -> None:
    assert_json(resp, 401, {"type": "no-perm", "reason": "No Permission"})
    assert resp.headers.get("WWW-Authenticate") == "jwt", describe(resp)


def assert_empty(resp: requests.Response, status: int) -> None:
    assert resp.status_code == status and resp.content == b"", (
        f"expected {status} with an empty body: {describe(resp)}"
    )


def ids(entries: list[dict]) -> list[int]:
    return [e["meta"]["id"] for e in entries]


def new_user(admin: Connection, name: str, password: str = "pw-" + "x" * 8) -> Connection:
    assert_json(admin.create_user(name, password), 201, {"ok": True})
    return login_as(admin.base_url, name, password)


def login_as(base_url: str, name: str, password: str) -> Connection:
    conn = Connection(base_url)
    resp = conn.authenticate(name, password)
    assert resp.status_code == 201, f"login {name}: {describe(resp)}"
    return conn


def append_many(conn: Connection, bucket: str, stream: str, n: int, start: int = 1) -> None:
    for k in range(start, start + n):
        resp = conn.send(bucket, stream, {"n": k})
        assert resp.status_code == 201 and resp.json()["meta"]["id"] == k, describe(resp)


def long_poll_until(
    conn: Connection,
    subs: Subscriptions,
    done: Callable[[list[dict]], bool],
    deadline_s: float = 10.0,
) -> list[dict]:
    """Long-poll /listen as iorio.Subscriptions does (re-poll from last + 1)
    until `done(all entries so far)`; returns every entry in arrival order."""
    got: list[dict] = []
    deadline = time.monotonic() + deadline_s
    while not done(got):
        assert time.monotonic() < deadline, f"long-poll: gave up after {deadline_s}s with ids {ids(got)}"
        resp = conn.listen(subs, timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT)
        if resp.status_code == 204:
            assert resp.content == b"", describe(resp)
            continue
        entries = assert_json(resp, 200)
        assert isinstance(entries, list) and entries, f"a 200 long-poll answer holds entries: {describe(resp)}"
        got += entries
        subs.update_seqnums(entries)
    return got


class WsListener:
    """A websocket-client connection to /listen that keeps pushed entry
    arrays apart from command replies (objects, or bullet's "pong")."""

    def __init__(self, url: str, timeout: float = IO_TIMEOUT) -> None:
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.entries: list[dict] = []
        self.replies: list[Any] = []

    def close(self) -> None:
        self.ws.close()

    def _recv_one(self, timeout: float = IO_TIMEOUT) -> None:
        self.ws.settimeout(timeout)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"no WebSocket frame within {timeout}s") from None
        assert isinstance(text, str), f"expected a text frame, got {text!r}"
        msg = "pong" if text == "pong" else json.loads(text)
        (self.entries.extend if isinstance(msg, list) else self.replies.append)(msg)

    def command(self, cmd: Any, timeout: float = IO_TIMEOUT) -> Any:
        self.ws.send(cmd if isinstance(cmd, str) else json.dumps(cmd))
        deadline = time.monotonic() + timeout
        while not self.replies:
            left = deadline - time.monotonic()
            assert left > 0, f"no reply to {cmd!r} within {timeout}s"
            self._recv_one(left)
        return self.replies.pop(0)

    def wait_entries(self, n: int, timeout: float = IO_TIMEOUT) -> list[dict]:
        """Waits until at least `n` entries arrived in total; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.entries) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"only {len(self.entries)} of {n} entries within {timeout}s: {ids(self.entries)}"
            self._recv_one(left)
        return self.entries

    def assert_quiet(self, timeout: float = QUIET_PERIOD) -> None:
        self.ws.settimeout(timeout)
        try:
            text = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return
        raise AssertionError(f"expected no WebSocket frame, received {text!r}")


def sse_read(
    conn: Connection,
    subs: Subscriptions,
    last_event_id: Optional[str],
    until: Callable[[list[dict]], bool],
    into: list[dict],
    timeout: float = IO_TIMEOUT,
) -> Optional[str]:
    """Opens an SSE /listen (with `Last-Event-ID` when given), appends every
    entry to `into` until `until(into)`, then disconnects. Returns the id of
    the last event received (or `last_event_id` when none arrived)."""
    resp = conn.listen_sse(subs, last_event_id=last_event_id, timeout=timeout)
    try:
        assert resp.status_code == 200, describe(resp)
        assert resp.headers.get("Content-Type", "").startswith("text/event-stream"), resp.headers
        if until(into):
            return last_event_id
        try:
            for event in sseclient.SSEClient(resp).events():
                batch = json.loads(event.data)
                assert isinstance(batch, list) and batch, f"SSE data is a non-empty array: {event.data!r}"
                into.extend(batch)
                if event.id:
                    last_event_id = event.id
                if until(into):
                    return last_event_id
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise AssertionError(f"SSE: no event within {timeout}s; have ids {ids(into)}") from exc
        raise AssertionError(f"SSE stream ended early; have ids {ids(into)}")
    finally:
        resp.close()


def sse_assert_quiet(conn: Connection, subs: Subscriptions, last_event_id: Optional[str]) -> None:
    """Reconnecting with `last_event_id` delivers nothing for QUIET_PERIOD."""
    resp = conn.listen_sse(subs, last_event_id=last_event_id, timeout=QUIET_PERIOD)
    try:
        assert resp.status_code == 200, describe(resp)
        try:
            for event in sseclient.SSEClient(resp).events():
                raise AssertionError(f"expected no SSE event after resuming, got id={event.id} {event.data!r}")
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            return
    finally:
        resp.close()


def by_stream(entries: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in entries:
        out.setdefault(e["meta"]["stream"], []).append(e["meta"]["id"])
    return out


def herald_cli(herald_bin: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(herald_bin), *args]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, env=clean_env()
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}"
    return res


# =====================================================================
# resttest.py: sessions
# =====================================================================
def test_sessions(iorio: HeraldServer, herald_bin: Path):
    conn = Connection(iorio.http_url)
    resp = conn.authenticate("admin", ADMIN_PASSWORD)
    body = assert_json(resp, 201)
    assert body["ok"] is True and body["username"] == "admin", describe(resp)
    assert isinstance(body["token"], str) and body["token"].count(".") == 2, "the token is a JWT"
    assert resp.headers.get("Location") == "/session", resp.headers

    assert_json(conn.whoami(), 200, {"username": "admin"})

    unauthorized = {"type": "unauthorized", "reason": "Unauthorized"}
    anon = Connection(iorio.http_url)
    for user, password in [("admin", "wrong"), ("nobody", ADMIN_PASSWORD)]:
        resp = anon.authenticate(user, password)
        assert_json(resp, 401, unauthorized)
        assert resp.headers.get("WWW-Authenticate") == "jwt", describe(resp)
        assert anon.token is None
    assert_json(anon.post_json("sessions", {"username": "admin"}, auth=False), 401, unauthorized)
    resp = anon.request("POST", "sessions", data="<login/>", headers={"Content-Type": "application/xml"})
    assert_empty(resp, 415)

    # A token that does not verify.
    bad = Connection(iorio.http_url, token="not.a.token")
    assert_no_perm(bad.whoami())

    # The login rate limit (a bucket of 10 attempts per client IP refilled over
    # a minute, by default; 7 used so far): the 11th attempt is refused, even
    # with the right password.
    statuses = []
    while 429 not in statuses and len(statuses) < 6:
        statuses.append(anon.authenticate("admin", "wrong").status_code)
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401} and len(statuses) >= 4, statuses
    resp = anon.authenticate("admin", ADMIN_PASSWORD)
    assert_json(resp, 429, {"type": "rate-limited", "reason": "Too Many Requests"})

    # `herald user add` works offline on the data dir; sessions survive a restart
    # (the session secret is kept in the data dir).
    iorio.stop()
    herald_cli(herald_bin, "user", "add", "carol", "--password", "carol-pw", "--data-dir", str(iorio.data_dir))
    iorio.start()
    conn.base_url = iorio.http_url  # the port may change
    assert_json(conn.whoami(), 200, {"username": "admin"})
    carol = login_as(iorio.http_url, "carol", "carol-pw")
    assert_json(carol.whoami(), 200, {"username": "carol"})


# =====================================================================
# resttest.py: users
# =====================================================================
def test_users(iorio: HeraldServer, admin: Connection):
    def post_users(body: Any, conn: Connection = admin, content_type: str = "application/json"):
        data = body if isinstance(body, str) else json.dumps(body)
        return conn.request("POST", "users/", data=data, headers={"Content-Type": content_type})

    assert_error(post_users({"username": "nopass"}), 400, "no-pass")
    assert_error(post_users({"password": "secret"}), 400, "no-user")
    assert_error(post_users({}), 400, "no-user-and-pass")
    assert_empty(post_users('<user name="x"/>', content_type="application/xml"), 415)
    assert_error(post_users('{"username": "trunc", "passw'), 400, "invalid-body")
    for name in ["has space", "slash/name", "-dash", "a" * 65, "anonymous", "g-group"]:
        assert_error(post_users({"username": name, "password": "pw"}), 400, "illegal-username")

    resp = post_users({"username": "bob", "password": "bob-pw"})
    assert_json(resp, 201, {"ok": True})
    assert resp.headers.get("Location") == "/users/bob", resp.headers
    assert_error(post_users({"username": "bob", "password": "other"}), 400, "user-exists")
    assert_error(post_users({"username": "admin", "password": "other"}), 400, "user-exists")

    users = assert_json(admin.list_users(), 200)
    assert {"username": "bob"} in users and {"username": "admin"} in users, users

    bob = login_as(iorio.http_url, "bob", "bob-pw")
    # Only an admin creates users or lists them; anonymous neither.
    assert_no_perm(post_users({"username": "eve", "password": "pw"}, conn=bob))
    assert_no_perm(bob.list_users())
    assert_no_perm(Connection(iorio.http_url).create_user("eve", "pw"))

    # PUT /users/: one's own password; another's needs admin.
    assert_json(bob.change_password("bob", "bob-pw2"), 200, {"ok": True})
    assert_no_perm(bob.change_password("admin", "hijack"))
    login_as(iorio.http_url, "bob", "bob-pw2")
    assert_json(admin.change_password("bob", "bob-pw3"), 200, {"ok": True})
    login_as(iorio.http_url, "bob", "bob-pw3")


# =====================================================================
# resttest.py: streams
# =====================================================================
def test_streams_post_get_delete(iorio: HeraldServer, admin: Connection):
    b, s = ADMIN_BUCKET, "events"
    assert_json(admin.query(b, s), 200, [])

    resp = admin.send(b, s, {"n": 1, "text": "first"})
    meta = assert_json(resp, 201)["meta"]
    assert meta["id"] == 1 and isinstance(meta["t"], int) and meta["t"] > 1_500_000_000_000, describe(resp)
    assert resp.headers.get("Location") == f"/streams/{b}/{s}/?limit=1&from=1", resp.headers
    for k in range(2, 6):
        assert assert_json(admin.send(b, s, {"n": k}), 201)["meta"]["id"] == k

    # limit defaults to 1; without `from` the newest, ascending.
    entries = assert_json(admin.query(b, s), 200)
    assert ids(entries) == [5] and entries[0]["data"] == {"n": 5}, entries
    assert ids(assert_json(admin.query(b, s, limit=3), 200)) == [3, 4, 5]
    entries = assert_json(admin.query(b, s, limit=2, from_=2), 200)
    assert ids(entries) == [2, 3] and [e["data"]["n"] for e in entries] == [2, 3], entries
    assert ids(assert_json(admin.query(b, s, limit=100, from_=1), 200)) == [1, 2, 3, 4, 5]
    assert assert_json(admin.query(b, s, limit=10, from_=1), 200)[0]["data"] == {"n": 1, "text": "first"}
    assert assert_json(admin.query(b, s, limit=10, from_=99), 200) == []
    # Non-integer values fall back to the defaults.
    assert ids(assert_json(admin.query(b, s, limit="many", from_="x"), 200)) == [5]

    resp = admin.query(b, s, limit=5, from_=1, download="events.json")
    assert ids(assert_json(resp, 200)) == [1, 2, 3, 4, 5]
    assert resp.headers.get("Content-Disposition") == 'attachment; filename="events.json"', resp.headers

    # Body checks: content type, valid JSON.
    assert_empty(admin.send_raw(b, s, "<event/>", content_type="application/xml"), 415)
    assert_empty(admin.send_raw(b, s, '{"n": 6}', content_type=None), 415)
    assert_error(admin.send_raw(b, s, '{"truncated": '), 400, "invalid-body")
    # Scalars and arrays are JSON too.
    assert assert_json(admin.send_raw(b, s, "42"), 201)["meta"]["id"] == 6
    assert assert_json(admin.query(b, s), 200)[0]["data"] == 42

    # Unsupported method.
    assert_status(admin.request("PUT", admin.stream_path(b, s), data="1"), 405)

    # DELETE, then the stream is empty and numbering restarts.
    assert_empty(admin.delete_stream(b, s), 204)
    assert_json(admin.query(b, s, limit=10, from_=1), 200, [])
    assert assert_json(admin.send(b, s, {"again": True}), 201)["meta"]["id"] == 1


def test_streams_permissions(iorio: HeraldServer, admin: Connection):
    bob = new_user(admin, "bob")
    anon = Connection(iorio.http_url)
    assert_json(admin.send(ADMIN_BUCKET, "private", {"secret": 1}), 201)

    # resttest: POST with no permission -> 401 no-perm.
    for who in (bob, anon):
        assert_no_perm(who.send(ADMIN_BUCKET, "private", {"x": 1}))
        assert_no_perm(who.query(ADMIN_BUCKET, "private"))
        assert_no_perm(who.delete_stream(ADMIN_BUCKET, "private"))
        assert_no_perm(who.send_patch(ADMIN_BUCKET, "private", [{"op": "add", "path": "/x", "value": 1}]))

    # Every user owns `_user_<name>` (IorioDB's user.has_bucket): a new stream starts at 1.
    resp = bob.send("_user_bob", "notes", {"hello": "bob"})
    assert assert_json(resp, 201)["meta"]["id"] == 1, describe(resp)
    assert_json(bob.query("_user_bob", "notes"), 200)
    assert_no_perm(anon.query("_user_bob", "notes"))

    # A token that does not verify: 400 with an empty body on stream routes.
    bad = Connection(iorio.http_url, token="garbage")
    assert_empty(bad.send("_user_bob", "notes", {}), 400)
    assert_empty(bad.query("_user_bob", "notes"), 400)
    # The token may also come as ?jwt= (IorioDB's second source).
    resp = bob.request("GET", bob.stream_path("_user_bob", "notes"), query={"jwt": bob.token}, auth=False)
    assert len(assert_json(resp, 200)) == 1


@pytest.mark.parametrize("key", ["role", "username"], ids=["role", "iorio.py-username"])
def test_grants_bucket_and_stream(iorio: HeraldServer, admin: Connection, key: str):
    """resttest: grant/revoke on a bucket or a stream -> 200 {"ok": true}.
    iorio.py sends the principal as `username`, the server contract as `role`."""
    ok = {"ok": True}
    bob = new_user(admin, "bob")
    assert_json(admin.send(ADMIN_BUCKET, "shared", {"v": 1}), 201)
    assert_json(admin.send(ADMIN_BUCKET, "other", {"v": 1}), 201)
    assert_no_perm(bob.query(ADMIN_BUCKET, "shared"))

    # Bucket grant: get on every stream of the bucket.
    assert_json(admin.grant("bob", "get", ADMIN_BUCKET, key=key), 200, ok)
    assert len(assert_json(bob.query(ADMIN_BUCKET, "shared"), 200)) == 1
    assert len(assert_json(bob.query(ADMIN_BUCKET, "other"), 200)) == 1
    acl = assert_json(admin.access(ADMIN_BUCKET), 200)
    assert {"name": "bob", "grants": ["get"]} in acl["users"], acl
    assert_json(admin.revoke("bob", "get", ADMIN_BUCKET, key=key), 200, ok)
    assert_no_perm(bob.query(ADMIN_BUCKET, "shared"))

    # Stream grant: put on one stream only.
    assert_json(admin.grant("bob", "put", ADMIN_BUCKET, "shared", key=key), 200, ok)
    assert assert_json(bob.send(ADMIN_BUCKET, "shared", {"v": 2}), 201)["meta"]["id"] == 2
    assert_no_perm(bob.send(ADMIN_BUCKET, "other", {"v": 2}))
    assert_no_perm(bob.query(ADMIN_BUCKET, "shared"))  # put is not get
    acl = assert_json(admin.access(ADMIN_BUCKET, "shared"), 200)
    assert acl == {"users": [{"name": "bob", "grants": ["put"]}], "groups": []}, acl
    assert_json(admin.revoke("bob", "put", ADMIN_BUCKET, "shared", key=key), 200, ok)
    assert_no_perm(bob.send(ADMIN_BUCKET, "shared", {"v": 3}))

    # Granting needs `grant` on the resource: bob has it on his own bucket only.
    assert_no_perm(bob.grant("bob", "get", ADMIN_BUCKET, key=key))
    assert_no_perm(bob.access(ADMIN_BUCKET))
    assert_json(bob.grant("admin", "get", "_user_bob", "notes", key=key), 200, ok)


def test_grants_invalid_fields(admin: Connection):
    path = admin.access_path(ADMIN_BUCKET)
    cases = [
        ({"role": "bob", "permission": "get"}, "action", None),
        ({"action": "grant", "permission": "get"}, "role", None),
        ({"action": "grant", "role": "bob"}, "permission", None),
        ({"action": "grant", "role": "bob", "permission": "fly"}, "permission", "fly"),
        ({"action": "bless", "role": "bob", "permission": "get"}, "action", "bless"),
    ]
    for body, field, value in cases:
        resp = admin.post_json(path, body)
        assert_json(resp, 400, {"type": "invalid-field", "field": field, "value": value})
    assert_empty(admin.request("POST", path, data="{}", headers={"Content-Type": "text/plain"}), 415)


# =====================================================================
# resttest.py / patchtest.py: PATCH
# =====================================================================
def test_patch(iorio: HeraldServer, admin: Connection):
    b, s = ADMIN_BUCKET, "doc"
    add = [{"op": "add", "path": "/items/-", "value": 1}]
    assert_error(admin.send_patch(b, s, add), 400, "not-found")  # an empty stream

    assert_json(admin.send(b, s, {"data": "patch", "items": []}), 201)
    resp = admin.send_patch(b, s, add)
    meta = assert_json(resp, 200)["meta"]
    assert meta["id"] == 2 and isinstance(meta["t"], int), describe(resp)
    assert assert_json(admin.query(b, s), 200)[0]["data"] == {"data": "patch", "items": [1]}
    # Every applied patch is also published to `{stream}-$patch`.
    assert [e["data"] for e in assert_json(admin.query(b, s + "-$patch", limit=10, from_=1), 200)] == [add]

    assert_empty(admin.send_patch(b, s, add, content_type="application/json"), 415)
    assert_error(admin.send_patch(b, s, "[{not json"), 400, "invalid-body")
    assert_error(admin.send_patch(b, s, {"op": "add"}), 400, "invalid-body")  # not an array
    failing = [{"op": "test", "path": "/items/0", "value": 99}]
    assert_error(admin.send_patch(b, s, failing), 400, "invalid-body")
    assert_error(admin.send_patch(b, s, [{"op": "remove", "path": "/nope"}]), 400, "invalid-body")
    assert ids(assert_json(admin.query(b, s, limit=10, from_=1), 200)) == [1, 2], "failed patches store nothing"


def test_patch_conflict_409_and_race(iorio: HeraldServer, admin: Connection):
    """patchtest.py, bounded: 10 threads append to /items/- at the same moment,
    retrying on 409 (up to 20 times); every item must end up in the last
    event exactly once, and concurrent patches must have produced 409s with
    IorioDB's body (typo "confict" included)."""
    b, s = ADMIN_BUCKET, "patch_race_condition_test"
    assert_json(admin.send(b, s, {"items": []}), 201)
    threads_n, rounds_max = 10, 6
    conflicts: list[dict] = []
    problems: list[str] = []
    applied: list[tuple[int, str]] = []
    lock = threading.Lock()

    def worker(i: int, rnd: int, barrier: threading.Barrier, conn: Connection) -> None:
        item = f"r{rnd}-t{i}"
        try:
            barrier.wait(IO_TIMEOUT)
            for _ in range(20):
                resp = conn.send_patch(b, s, [{"op": "add", "path": "/items/-", "value": item}])
                if resp.status_code == 200:
                    with lock:
                        applied.append((resp.json()["meta"]["id"], item))
                    return
                if resp.status_code == 409:
                    with lock:
                        conflicts.append(resp.json())
                    continue
                with lock:
                    problems.append(describe(resp))
                return
            with lock:
                problems.append(f"{item}: still conflicting after 20 attempts")
        except Exception as exc:  # noqa: BLE001 - reported below
            with lock:
                problems.append(f"{item}: {exc!r}")

    conns = [admin.clone() for _ in range(threads_n)]
    rounds = 0
    while rounds < rounds_max and (rounds < 2 or not conflicts):
        barrier = threading.Barrier(threads_n)
        threads = [
            threading.Thread(target=worker, args=(i, rounds, barrier, conns[i]), daemon=True)
            for i in range(threads_n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), "a patch worker hung"
        rounds += 1

    assert not problems, problems
    assert conflicts, f"no 409 in {rounds} rounds of {threads_n} simultaneous patches"
    for body in conflicts:
        assert body["type"] == "error", body
        reason = body["reason"]
        assert reason["reason"] == "confict" and reason["field"] == "seqnum", body
        assert isinstance(reason["expected"], int) and isinstance(reason["got"], int), body
        assert reason["got"] > reason["expected"], f"a later writer moved the stream on: {body}"

    items = [f"r{r}-t{i}" for r in range(rounds) for i in range(threads_n)]
    last = assert_json(admin.query(b, s), 200)[0]
    assert Counter(last["data"]["items"]) == Counter(items), "every item exactly once"
    # In the order the server applied them (by the seq each 200 returned).
    assert last["data"]["items"] == [item for _, item in sorted(applied)]
    assert last["meta"]["id"] == 1 + len(items)
    assert len(assert_json(admin.query(b, s + "-$patch", limit=1000, from_=1), 200)) == len(items)


# =====================================================================
# resttest.py / apitest.py: listing, ping
# =====================================================================
def test_listing_and_ping(iorio: HeraldServer, admin: Connection):
    bob = new_user(admin, "bob")
    for st in ("s1", "s2"):
        assert_json(admin.send(ADMIN_BUCKET, st, {}), 201)
    assert_json(admin.send("public-ish", "x", {}), 201)
    assert_json(bob.send("_user_bob", "mine", {}), 201)

    got = assert_json(admin.list_buckets(), 200)
    assert got["status"] == "ok" and sorted(got["data"]) == ["_user_admin", "_user_bob", "public-ish"], got
    got = assert_json(admin.list_streams(ADMIN_BUCKET), 200)
    assert got["status"] == "ok" and sorted(got["data"]) == ["s1", "s2"], got
    # Herald lists only what the caller may list (a deliberate difference).
    assert assert_json(bob.list_buckets(), 200) == {"status": "ok", "data": ["_user_bob"]}
    assert assert_json(bob.list_streams("_user_bob"), 200) == {"status": "ok", "data": ["mine"]}
    assert_no_perm(bob.list_streams(ADMIN_BUCKET))
    assert assert_json(Connection(iorio.http_url).list_buckets(), 200) == {"status": "ok", "data": []}

    assert_json(admin.ping(), 200, {"pong": "herald"})
    assert_json(Connection(iorio.http_url).ping(), 200, {"pong": "herald"})
    assert_empty(Connection(iorio.http_url, token="garbage").ping(), 400)
    assert_empty(admin.request("GET", "ping", headers={"Accept": "text/html"}), 406)


# =====================================================================
# apitest.py: concurrent load, bounded in time
# =====================================================================
def test_apitest_style_load(iorio_factory):
    """Inserters, patchers, requesters, listers and long-poll listeners all at
    once on bucket _user_admin, as apitest.py runs them; afterwards nothing
    unexpected happened, every insert is stored once, and every listener saw
    every stream in order without gap or duplicate."""
    server = iorio_factory(long_poll_timeout=1)
    admin = login(server)
    b = ADMIN_BUCKET
    insert_streams = ["load-0", "load-1", "load-2"]
    patch_streams = ["patch-0", "patch-1"]
    all_streams = insert_streams + patch_streams
    LOAD_SECONDS = 4.0
    MAX_INSERTS_PER_THREAD = 300
    N_INSERTERS, N_PATCHERS, N_REQUESTERS, N_LISTERS, N_LISTENERS = 4, 3, 2, 1, 3

    for st in patch_streams:  # apitest's patchers POST this when the stream is empty
        assert_json(admin.send(b, st, {"data": "patch", "numbers": []}), 201)

    stop_writers = threading.Event()
    drain_listeners = threading.Event()
    lock = threading.Lock()
    problems: list[str] = []
    counts: Counter = Counter()
    inserted: dict[str, dict[int, Any]] = {st: {} for st in insert_streams}
    patched: dict[str, list[tuple[int, str]]] = {st: [] for st in patch_streams}
    final_last: dict[str, int] = {}
    listener_seen: list[dict[str, list[int]]] = []

    def problem(who: str, text: str) -> None:
        with lock:
            problems.append(f"{who}: {text}")

    def guarded(fn: Callable[..., None]) -> Callable[..., None]:
        def run(who: str, *args: Any) -> None:
            try:
                fn(who, *args)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                problem(who, f"raised {exc!r}")

        return run

    @guarded
    def inserter(who: str, i: int) -> None:
        conn = admin.clone()
        for n in range(MAX_INSERTS_PER_THREAD):
            if stop_writers.is_set():
                break
            st = insert_streams[(i + n) % len(insert_streams)]
            data = {"inserter": i, "n": n, "text": f"event {n} from inserter {i}"}
            resp = conn.send(b, st, data)
            with lock:
                counts["insert"] += 1
            if resp.status_code != 201:
                problem(who, describe(resp))
                continue
            seq = resp.json()["meta"]["id"]
            with lock:
                if seq in inserted[st]:
                    problems.append(f"{who}: seq {seq} of {st} handed out twice")
                inserted[st][seq] = data

    @guarded
    def patcher(who: str, i: int) -> None:
        conn = admin.clone()
        st = patch_streams[i % len(patch_streams)]
        n = 0
        while not stop_writers.is_set():
            value = f"p{i}-{n}"
            resp = conn.send_patch(b, st, [{"op": "add", "path": "/numbers/-", "value": value}])
            with lock:
                counts[f"patch {resp.status_code}"] += 1
            if resp.status_code == 200:
                with lock:
                    patched[st].append((resp.json()["meta"]["id"], value))
                n += 1
            elif resp.status_code != 409:  # 409: a concurrent patcher won; retry
                problem(who, describe(resp))
                return

    @guarded
    def requester(who: str, i: int) -> None:
        conn = admin.clone()
        rnd = random.Random(i)
        while not stop_writers.is_set():
            st = rnd.choice(all_streams)
            from_ = rnd.choice([None, 1, 5])
            resp = conn.query(b, st, limit=10, from_=from_)
            with lock:
                counts["get"] += 1
            if resp.status_code != 200:
                problem(who, describe(resp))
                continue
            got = ids(resp.json())
            want_start = from_ if from_ is not None and got else (got[0] if got else 0)
            if len(got) > 10 or got != list(range(want_start, want_start + len(got))):
                problem(who, f"GET {st} limit=10 from={from_}: ids {got}")

    @guarded
    def lister(who: str, i: int) -> None:
        conn = admin.clone()
        while not stop_writers.is_set():
            for resp, must_have in ((conn.list_buckets(), {b}), (conn.list_streams(b), set(patch_streams))):
                with lock:
                    counts["list"] += 1
                if resp.status_code != 200 or not isinstance(resp.json().get("data"), list):
                    problem(who, describe(resp))
                elif not must_have <= set(resp.json()["data"]):
                    problem(who, f"listing lacks {must_have}: {describe(resp)}")
            time.sleep(0.01)

    @guarded
    def listener(who: str, i: int) -> None:
        conn = admin.clone()
        subs = Subscriptions()
        for st in all_streams:
            subs.add(b, st, 1)
        seen: dict[str, list[int]] = {st: [] for st in all_streams}
        with lock:
            listener_seen.append(seen)
        while True:
            if drain_listeners.is_set() and all(
                subs.next_seq(b, st) == final_last[st] + 1 for st in all_streams
            ):
                return
            resp = conn.listen(subs, timeout=1 + IO_TIMEOUT)
            with lock:
                counts[f"listen {resp.status_code}"] += 1
            if resp.status_code == 204:
                continue
            if resp.status_code != 200:
                problem(who, describe(resp))
                return
            entries = resp.json()
            if not isinstance(entries, list) or not entries:
                problem(who, f"a 200 long-poll answer without entries: {describe(resp)}")
                return
            for e in entries:
                meta = e["meta"]
                st = meta.get("stream")
                if meta.get("bucket") != b or st not in seen or "gap" in meta or "reset" in meta:
                    problem(who, f"unexpected entry {e!r}")
                    return
                expected = (seen[st][-1] + 1) if seen[st] else 1
                if meta["id"] != expected:
                    problem(who, f"{st}: got id {meta['id']} after {seen[st][-3:]} (expected {expected})")
                seen[st].append(meta["id"])
                if st in inserted:
                    with lock:
                        want = inserted[st].get(meta["id"], e["data"])
                    if e["data"] != want:
                        problem(who, f"{st} #{meta['id']}: data {e['data']!r} != posted {want!r}")
            subs.update_seqnums(entries)

    roles = (
        [(inserter, f"inserter-{i}", i) for i in range(N_INSERTERS)]
        + [(patcher, f"patcher-{i}", i) for i in range(N_PATCHERS)]
        + [(requester, f"requester-{i}", i) for i in range(N_REQUESTERS)]
        + [(lister, f"lister-{i}", i) for i in range(N_LISTERS)]
    )
    writers = [threading.Thread(target=fn, args=(who, i), daemon=True, name=who) for fn, who, i in roles]
    listeners = [
        threading.Thread(target=listener, args=(f"listener-{i}", i), daemon=True, name=f"listener-{i}")
        for i in range(N_LISTENERS)
    ]
    t0 = time.monotonic()
    for t in listeners + writers:
        t.start()
    time.sleep(LOAD_SECONDS)
    stop_writers.set()
    for t in writers:
        t.join(IO_TIMEOUT * 2)
        assert not t.is_alive(), f"{t.name} did not stop"

    # The final state, read back with GET (paging from=1).
    for st in all_streams:
        stored: list[dict] = []
        while True:
            page = assert_json(admin.query(b, st, limit=1000, from_=len(stored) + 1), 200)
            stored += page
            if len(page) < 1000:
                break
        got = ids(stored)
        assert got == list(range(1, len(got) + 1)), f"{st}: stored ids are not 1..N: {got[:20]}..."
        final_last[st] = len(got)
        if st in inserted:
            assert sorted(inserted[st]) == got, f"{st}: inserted seqs {len(inserted[st])} vs stored {len(got)}"
            for e in stored:
                assert e["data"] == inserted[st][e["meta"]["id"]], f"{st} #{e['meta']['id']}: {e!r}"
        else:
            by_id = sorted(patched[st])
            assert [i for i, _ in by_id] == got[1:], f"{st}: each 200 PATCH is one stored event"
            assert stored[-1]["data"]["numbers"] == [v for _, v in by_id], f"{st}: numbers lost or repeated"

    drain_listeners.set()
    for t in listeners:
        t.join(LONG_POLL_TIMEOUT + IO_TIMEOUT * 2)
        assert not t.is_alive(), f"{t.name} did not catch up: {problems}"
    elapsed = time.monotonic() - t0
    print(f"load: {elapsed:.1f}s, requests {dict(counts)}, events per stream {final_last}")

    assert not problems, "\n".join(problems[:30])
    assert counts["insert"] > 50 and counts["get"] > 10 and counts["list"] > 4, counts
    assert counts["patch 200"] > 5, counts
    assert len(listener_seen) == N_LISTENERS
    for seen in listener_seen:
        for st in all_streams:
            assert seen[st] == list(range(1, final_last[st] + 1)), (
                f"{st}: listener saw {len(seen[st])} of {final_last[st]} events"
            )
    assert elapsed < 20, f"the load test took {elapsed:.1f}s"


# =====================================================================
# /listen over SSE (sseclient-py), resumed with Last-Event-ID
# =====================================================================
def test_sse_resume_with_last_event_id(iorio: HeraldServer, admin: Connection):
    b = ADMIN_BUCKET
    streams = ["sse-a", "sse-b"]
    for st in streams:
        append_many(admin, b, st, 3)
    expected = {st: list(range(1, 4)) for st in streams}
    total_appends = 60
    done = threading.Event()
    errors: list[str] = []

    def appender() -> None:
        conn = admin.clone()
        try:
            for k in range(total_appends):
                st = streams[k % 2]
                resp = conn.send(b, st, {"k": k})
                if resp.status_code != 201:
                    errors.append(describe(resp))
                    return
                expected[st].append(resp.json()["meta"]["id"])
                time.sleep(0.01)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
        finally:
            done.set()

    subs = Subscriptions().add(b, "sse-a", 1).add(b, "sse-b", 1)
    got: list[dict] = []
    thread = threading.Thread(target=appender, daemon=True)
    thread.start()

    # First connection: from 1 (the s= entries); disconnect after a while.
    last_id = sse_read(admin, subs, None, lambda g: len(g) >= 12, got)
    assert last_id and last_id.startswith("1.") and last_id.count(".") == 2, (
        f"resume id names both streams: {last_id!r}"
    )
    time.sleep(0.15)  # appends continue while disconnected
    # Second: Last-Event-ID overrides the s=...:1 positions.
    last_id = sse_read(admin, subs, last_id, lambda g: len(g) >= 40, got)
    time.sleep(0.1)
    # Third: until the appender is done and everything arrived.
    want_total = 6 + total_appends
    last_id = sse_read(admin, subs, last_id, lambda g: len(g) >= want_total, got)
    assert done.wait(IO_TIMEOUT)
    thread.join(IO_TIMEOUT)
    assert not errors, errors

    seen = by_stream(got)
    for st in streams:
        assert seen[st] == expected[st] == list(range(1, len(expected[st]) + 1)), (
            f"{st}: SSE delivered {seen[st]}, expected {expected[st]}"
        )
    data = {(e["meta"]["stream"], e["meta"]["id"]): e["data"] for e in got}
    assert data[("sse-a", 1)] == {"n": 1} and data[("sse-b", 4)] == {"k": 1}
    # Resuming once more delivers nothing: everything was seen exactly once.
    sse_assert_quiet(admin, subs, last_id)

    # Without Last-Event-ID, s=...:from decides; a stream named in the id
    # resumes from the id even if the new request adds another stream.
    more = Subscriptions().add(b, "sse-a", 1).add(b, "sse-b", 1).add(b, "sse-c", 1)
    assert_json(admin.send(b, "sse-c", {"c": 1}), 201)
    extra: list[dict] = []
    sse_read(admin, more, last_id, lambda g: len(g) >= 1, extra)
    assert [(e["meta"]["stream"], e["meta"]["id"]) for e in extra] == [("sse-c", 1)], extra


# =====================================================================
# /listen over WebSocket (websocket-client)
# =====================================================================
def test_websocket_listen_commands(iorio: HeraldServer, admin: Connection):
    b = ADMIN_BUCKET
    append_many(admin, b, "ws1", 3)
    ws = WsListener(admin.listen_url(Subscriptions().add(b, "ws1", 1), scheme="ws"))
    try:
        entries = ws.wait_entries(3)
        assert ids(entries) == [1, 2, 3], entries
        assert entries[0]["meta"]["bucket"] == b and entries[0]["meta"]["stream"] == "ws1", entries[0]
        assert entries[0]["data"] == {"n": 1}

        assert ws.command({"cmd": "ping", "id": 1}) == {"ok": True, "id": 1, "type": "ping"}
        assert ws.command("ping") == "pong"  # bullet's heartbeat

        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "ws2", "id": 2}) == {
            "ok": True, "id": 2, "type": "subscribe",
        }
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "ws2", "id": 3}) == {
            "ok": False, "id": 3, "reason": "already subscribed",
        }
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "ws1", "id": 4})["reason"] == "already subscribed"

        assert_json(admin.send(b, "ws2", {"to": "ws2"}), 201)
        assert_json(admin.send(b, "ws1", {"to": "ws1"}), 201)
        entries = ws.wait_entries(5)[3:]
        assert sorted((e["meta"]["stream"], e["meta"]["id"]) for e in entries) == [("ws1", 4), ("ws2", 1)], entries

        assert ws.command({"cmd": "unsubscribe", "bucket": b, "stream": "ws2", "id": 5}) == {
            "ok": True, "id": 5, "type": "unsubscribe",
        }
        assert ws.command({"cmd": "unsubscribe", "bucket": b, "stream": "ws2", "id": 6}) == {
            "ok": False, "id": 6, "reason": "not subscribed",
        }
        assert_json(admin.send(b, "ws2", {"after": "unsubscribe"}), 201)
        ws.assert_quiet()
        assert len(ws.entries) == 5
        assert_json(admin.send(b, "ws1", {"still": "subscribed"}), 201)
        assert ids(ws.wait_entries(6)[5:]) == [5]

        # Subscribing with `from` replays stored events.
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "ws2", "id": 7, "from": 1})["ok"] is True
        replay = ws.wait_entries(8)[6:]
        assert [(e["meta"]["stream"], e["meta"]["id"]) for e in replay] == [("ws2", 1), ("ws2", 2)], replay

        # Malformed commands.
        for cmd, reason in [
            ({"cmd": "subscribe", "id": 10}, "missing bucket and stream"),
            ({"cmd": "subscribe", "bucket": b, "id": 11}, "missing stream"),
            ({"cmd": "unsubscribe", "stream": "x", "id": 12}, "missing bucket"),
            ({"cmd": "launch", "id": 13}, "unknown command"),
        ]:
            assert ws.command(cmd) == {"ok": False, "id": cmd["id"], "reason": reason}, cmd
        assert ws.command("{not json") == {"ok": False, "id": None, "reason": "invalid-json"}

        # Bullet's COMET send side: POST /listen runs one command.
        resp = admin.request("POST", "listen", query={"jwt": admin.token}, data=json.dumps({"cmd": "ping", "id": 9}))
        assert_json(resp, 200, {"ok": True, "id": 9, "type": "ping"})
        ws.assert_quiet()
    finally:
        ws.close()


def test_websocket_listen_permissions(iorio: HeraldServer, admin: Connection):
    """Unlike IorioDB, a WebSocket subscribe command checks read permission;
    query subscriptions without permission are skipped silently (as IorioDB)."""
    b = ADMIN_BUCKET
    bob = new_user(admin, "bob")
    assert_json(admin.send(b, "secret", {"s": 1}), 201)
    subs = Subscriptions().add(b, "secret", 1).add("_user_bob", "inbox", 1)
    ws = WsListener(bob.listen_url(subs, scheme="ws"))
    try:
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "secret", "id": 1}) == {
            "ok": False, "id": 1, "reason": "no-perm",
        }
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "secret", "id": 2, "from": 1})["reason"] == "no-perm"
        assert_json(bob.send("_user_bob", "inbox", {"hi": 1}), 201)
        assert_json(admin.send(b, "secret", {"s": 2}), 201)
        entries = ws.wait_entries(1)
        ws.assert_quiet()
        assert [(e["meta"]["stream"], e["meta"]["id"]) for e in ws.entries] == [("inbox", 1)], entries
        assert ws.command({"cmd": "subscribe", "bucket": "_user_bob", "stream": "other", "id": 3})["ok"] is True
        # A grant makes the same command succeed.
        assert_json(admin.grant("bob", "get", b, "secret"), 200, {"ok": True})
        assert ws.command({"cmd": "subscribe", "bucket": b, "stream": "secret", "id": 4, "from": 1}) == {
            "ok": True, "id": 4, "type": "subscribe",
        }
        assert ids(ws.wait_entries(3)[1:]) == [1, 2]
    finally:
        ws.close()

    anon = WsListener(Connection(iorio.http_url).listen_url(Subscriptions(), scheme="ws"))
    try:
        assert anon.command({"cmd": "subscribe", "bucket": b, "stream": "secret", "id": 1})["reason"] == "no-perm"
    finally:
        anon.close()

    # A token that does not verify: no listener at all (400, empty body).
    bad = Connection(iorio.http_url, token="garbage")
    with pytest.raises(websocket.WebSocketBadStatusException) as exc:
        websocket.create_connection(bad.listen_url(Subscriptions().add(b, "secret"), scheme="ws"), timeout=IO_TIMEOUT)
    assert exc.value.status_code == 400
    assert_empty(bad.listen(Subscriptions().add(b, "secret")), 400)


# =====================================================================
# Long-poll details and resuming from before the in-memory window
# =====================================================================
def test_long_poll_basics(iorio: HeraldServer, admin: Connection):
    b = ADMIN_BUCKET
    # No events within the long-poll timeout: 204, empty.
    t0 = time.monotonic()
    resp = admin.listen(Subscriptions().add(b, "quiet"), timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT)
    assert_empty(resp, 204)
    assert time.monotonic() - t0 >= LONG_POLL_TIMEOUT - 0.5

    # A poll is held until an event arrives, and answers at once. (From 1, so
    # that a poll that reached the server late still gets the event.)
    result: dict[str, Any] = {}

    def poll() -> None:
        result["resp"] = admin.clone().listen(
            Subscriptions().add(b, "held", 1), timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT
        )

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(0.3)
    assert_json(admin.send(b, "held", {"now": True}), 201)
    t.join(LONG_POLL_TIMEOUT + IO_TIMEOUT)
    assert not t.is_alive()
    entries = assert_json(result["resp"], 200)
    assert len(entries) == 1 and entries[0]["data"] == {"now": True}
    meta = entries[0]["meta"]
    assert (meta["id"], meta["bucket"], meta["stream"]) == (1, b, "held") and isinstance(meta["t"], int), meta

    # Entries without read permission, or malformed, are skipped silently; the
    # cache-buster `&<time>` is ignored.
    bob = new_user(admin, "bob")
    q = [("jwt", bob.token), ("s", f"{b}:held:1"), ("s", "nonsense"), ("s", "_user_bob:x:notanumber")]
    url = bob.url("listen", q) + f"&{int(time.time() * 1000)}"  # iorio.py's cache-buster
    resp = bob.http.get(url, timeout=LONG_POLL_TIMEOUT + IO_TIMEOUT)
    assert_empty(resp, 204)


def test_resume_before_memory_window(iorio: HeraldServer, admin: Connection):
    """600 events (more than the engine's 256-event in-memory window): a
    listener from 1, on every transport, gets all of them in order."""
    b, s, n = ADMIN_BUCKET, "old", 600
    append_many(admin, b, s, n)
    want = list(range(1, n + 1))

    entries = long_poll_until(admin, Subscriptions().add(b, s, 1), lambda g: len(g) >= n)
    assert ids(entries) == want
    assert [e["data"]["n"] for e in entries] == want
    entries = long_poll_until(admin, Subscriptions().add(b, s, 250), lambda g: len(g) >= n - 249)
    assert ids(entries) == want[249:]

    ws = WsListener(admin.listen_url(Subscriptions().add(b, s, 1), scheme="ws"))
    try:
        assert ids(ws.wait_entries(n)) == want
        append_many(admin, b, s, 1, start=n + 1)  # and then live
        assert ids(ws.wait_entries(n + 1)) == want + [n + 1]
        ws.assert_quiet()
    finally:
        ws.close()

    got: list[dict] = []
    sse_read(admin, Subscriptions().add(b, s, 1), None, lambda g: len(g) >= n + 1, got)
    assert ids(got) == want + [n + 1]

    stored = assert_json(admin.query(b, s, limit=1000, from_=1), 200)
    assert ids(stored) == want + [n + 1]


# =====================================================================
# Retention: a gap marker for events no longer kept
# =====================================================================
def test_retention_gap_marker(iorio_factory, tmp_path: Path):
    config = tmp_path / "herald.toml"
    config.write_text('[[retention]]\npattern = "/short/#"\nmax-events = 5\n')
    server = iorio_factory("--config", str(config))
    admin = login(server)
    append_many(admin, "short", "s", 20)

    deadline = time.monotonic() + 10
    while True:
        stored = assert_json(admin.query("short", "s", limit=100, from_=1), 200)
        if ids(stored) == [16, 17, 18, 19, 20]:
            break
        assert time.monotonic() < deadline, f"retention did not trim to the last 5: {ids(stored)}"
        time.sleep(0.2)
    assert ids(assert_json(admin.query("short", "s", limit=10), 200)) == [16, 17, 18, 19, 20]

    gap = {
        "meta": {"id": 15, "t": 0, "bucket": "short", "stream": "s", "gap": {"from": 1, "to": 15}},
        "data": None,
    }

    def check(entries: list[dict], transport: str) -> None:
        assert entries and entries[0] == gap, f"{transport}: first entry {entries[:1]!r}, expected {gap!r}"
        assert ids(entries[1:]) == [16, 17, 18, 19, 20], f"{transport}: {ids(entries)}"
        assert [e["data"] for e in entries[1:]] == [{"n": k} for k in range(16, 21)]

    subs = Subscriptions().add("short", "s", 1)
    entries = long_poll_until(admin, subs, lambda g: bool(g) and g[-1]["meta"]["id"] >= 20)
    check(entries, "long-poll")
    assert subs.next_seq("short", "s") == 21, "update_seqnums moved past the gap"

    ws = WsListener(admin.listen_url(Subscriptions().add("short", "s", 1), scheme="ws"))
    try:
        check(ws.wait_entries(6), "websocket")
        ws.assert_quiet()
    finally:
        ws.close()

    got: list[dict] = []
    sse_read(admin, Subscriptions().add("short", "s", 3), None, lambda g: len(g) >= 6, got)
    assert got[0]["meta"]["gap"] == {"from": 3, "to": 15}, got[0]
    assert ids(got[1:]) == [16, 17, 18, 19, 20]

    # From inside the retained range: no marker.
    entries = long_poll_until(admin, Subscriptions().add("short", "s", 18), lambda g: len(g) >= 3)
    assert ids(entries) == [18, 19, 20] and all("gap" not in e["meta"] for e in entries)


# =====================================================================
# Delete and recreate: the reset marker
# =====================================================================
def test_reset_marker_after_delete(iorio: HeraldServer, admin: Connection):
    """A stream deleted and created again restarts at 1; a connected
    WebSocket listener, and an SSE client resuming with Last-Event-ID (whose
    resume id carries the epoch), get the reset marker first."""
    b, s = ADMIN_BUCKET, "reborn"
    append_many(admin, b, s, 3)
    subs = Subscriptions().add(b, s, 1)
    got: list[dict] = []
    last_id = sse_read(admin, subs, None, lambda g: len(g) >= 3, got)
    ws = WsListener(admin.listen_url(subs, scheme="ws"))
    try:
        assert ids(ws.wait_entries(3)) == [1, 2, 3]
        assert_empty(admin.delete_stream(b, s), 204)
        append_many(admin, b, s, 2)
        after = ws.wait_entries(6)[3:]
        reset = after[0]
        assert reset["meta"]["id"] == 0 and reset["data"] is None, reset
        assert (reset["meta"]["bucket"], reset["meta"]["stream"]) == (b, s), reset
        assert isinstance(reset["meta"]["reset"]["epoch"], int), reset
        assert ids(after[1:]) == [1, 2] and [e["data"] for e in after[1:]] == [{"n": 1}, {"n": 2}]
    finally:
        ws.close()

    resumed: list[dict] = []
    sse_read(admin, subs, last_id, lambda g: len(g) >= 3, resumed)
    assert resumed[0]["meta"].get("reset") == reset["meta"]["reset"], resumed[0]
    assert ids(resumed[1:]) == [1, 2]
    # iorio.Subscriptions-style bookkeeping goes back to 1 on a reset.
    subs.update_seqnums([{"meta": {"id": 3, "bucket": b, "stream": s}}])
    subs.update_seqnums(resumed)
    assert subs.next_seq(b, s) == 3

    # A long-poll client carries no epoch; asking for seq 4 of a stream that now ends at 2
    # means it saw an earlier incarnation: it gets the reset marker and 1, 2, not silence.
    polled = long_poll_until(admin, Subscriptions().add(b, s, 4), lambda g: len(g) >= 3)
    assert polled[0]["meta"].get("reset") == reset["meta"]["reset"], polled[0]
    assert ids(polled[1:]) == [1, 2]
