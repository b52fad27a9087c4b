"""Icepeak interop: Herald's Icepeak listener driven by the same Python client
libraries Icepeak's own integration tests and README use (requests,
websockets, websocket-client, PyJWT), plus the Herald main API and metrics
listeners that share its tree.

Contract: shared/seed-contracts.md section 1 (1.2 HTTP, 1.3 WebSocket A,
1.4 `?method=reusable`, 1.5 JWT, 1.6 persistence, 1.7 metrics, 1.8 tests).
Every network wait has a timeout; see herald_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

import jwt
import pytest
import websocket  # websocket-client, the sync library from the Icepeak README
from websockets.exceptions import ConnectionClosed, InvalidStatus

from herald_e2e import (
    HeraldServer,
    assert_quiet,
    auth,
    clean_env,
    delete,
    expect_close,
    get,
    put,
    recv_json,
    request,
    run,
    ws_connect,
)

# At least 32 bytes, so PyJWT does not warn about short HMAC keys.
SECRET = "herald-e2e-secret-0123456789abcdef"
OTHER_SECRET = "not-the-herald-secret-0123456789abcdef"
FOO_READ = [{"prefix": ["foo"], "modes": ["read"]}]


def mint(whitelist=FOO_READ, secret=SECRET, **claims) -> str:
    """An HS256 token with an `icepeak` claim, minted with PyJWT."""
    payload = {"icepeak": {"version": 1, "whitelist": whitelist}, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def cli_token(herald_bin: Path, *paths: str, secret: str = SECRET, expires: int | None = None) -> str:
    """A token minted by `herald token` (Icepeak's icepeak-token-gen)."""
    cmd = [str(herald_bin), "token", "--jwt-secret", secret]
    if expires is not None:
        cmd += ["--expires", str(expires)]
    for p in paths:
        cmd += ["--path", p]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL, env=clean_env()
    )
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr}"
    token = res.stdout.strip()
    assert token.count(".") == 2, f"`herald token` printed {res.stdout!r}, not a JWT"
    return token


def assert_json(resp, status: int, body) -> None:
    assert resp.status_code == status, (
        f"{resp.request.method} {resp.url}: expected {status} {body!r}, "
        f"got {resp.status_code} {resp.text!r}"
    )
    assert resp.json() == body, f"{resp.request.method} {resp.url}: body {resp.text!r}"


def assert_put_ok(resp) -> None:
    assert resp.status_code == 202, f"PUT/DELETE {resp.url}: {resp.status_code} {resp.text!r}"


@pytest.fixture
def auth_herald(herald_factory) -> HeraldServer:
    return herald_factory("--enable-jwt-auth", "--jwt-secret", SECRET)


# =====================================================================
# 1.8 read_after_write_test.py
# =====================================================================
def test_read_after_write(herald: HeraldServer):
    """PUT ?durable, then the first WebSocket frame on the root is the whole
    document: root replace, intermediate creation, merge of a sibling key."""
    json1: dict = {}
    json2 = {"so": {}}
    json3 = {"so": {"cool": {}}}
    json4 = {"so": {"cool": {}, "hot": {}}}
    steps = [
        ("", json1, json1),
        ("", json2, json2),
        ("", json3, json3),
        ("so", {"cool": {}}, json3),
        ("so/hot", json1, json4),
    ]

    async def first_frame(url: str):
        async with await ws_connect(url) as ws:
            return await recv_json(ws)

    for path, data, expected in steps:
        assert_put_ok(put(herald.ip(path, durable=True), data))
        got = run(first_frame(herald.ws("")))
        assert got == expected, f"after PUT {data!r} to /{path}: first frame {got!r}, expected {expected!r}"


# =====================================================================
# 1.8 multiple_clients_test.py
# =====================================================================
def test_multiple_clients(herald: HeraldServer):
    url = herald.ip("so/cool")

    async def body():
        assert_put_ok(put(herald.ip("so/cool", durable=True), None))
        conns = [await ws_connect(herald.ws("so/cool")) for _ in range(10)]
        try:
            for n, c in enumerate(conns):
                assert await recv_json(c) is None, f"client {n}: initial value"
            new_data = {"status": "freezing"}
            assert_put_ok(put(url, new_data))  # not durable, as upstream
            for n, c in enumerate(conns):
                assert await recv_json(c) == new_data, f"client {n}: pushed value"
            assert_put_ok(put(url, None))  # reset, as upstream
            for n, c in enumerate(conns):
                assert await recv_json(c) is None, f"client {n}: reset to null"
        finally:
            for c in conns:
                await c.close()

    run(body())


# =====================================================================
# README "Connecting a client" + connection_test.py (websocket-client)
# =====================================================================
def test_websocket_client_sync_subscriber(herald: HeraldServer):
    conn = websocket.create_connection(herald.ws("foo"), timeout=5)
    try:
        assert json.loads(conn.recv()) is None, "current value of a missing path is null"
        assert_put_ok(put(herald.ip("foo"), {"status": "freezing"}))
        assert json.loads(conn.recv()) == {"status": "freezing"}
        assert_put_ok(put(herald.ip("foo/status"), "melting"))
        assert json.loads(conn.recv()) == {"status": "melting"}, "change below /foo is pushed as the full value"
        assert_put_ok(delete(herald.ip("foo")))
        assert json.loads(conn.recv()) is None, "deleted path is pushed as null"
    finally:
        conn.close()

    # connection_test.py: data PUT first is the first frame of a new connection.
    assert_put_ok(put(herald.ip("so/cool", durable=True), {"status": "freezing"}))
    conn = websocket.create_connection(herald.ws("so/cool"), timeout=5)
    try:
        assert json.loads(conn.recv()) == {"status": "freezing"}
    finally:
        conn.close()


# =====================================================================
# 1.2 HTTP API
# =====================================================================
def test_http_get_put_delete(herald: HeraldServer):
    r = get(herald.ip(""))
    assert r.status_code == 200 and r.json() == {}, f"fresh document: {r.status_code} {r.text!r}"
    assert r.headers["Content-Type"].startswith("application/json")

    r = get(herald.ip("missing/path"))
    assert r.status_code == 404 and r.content == b"", f"missing path: {r.status_code} {r.text!r}"

    r = put(herald.ip("a/b"), 123)
    assert r.status_code == 202 and r.content == b"", f"plain PUT: {r.status_code} {r.text!r}"
    r = put(herald.ip("a/c", durable=True), "x")
    assert r.status_code == 202 and r.content == b"", f"durable PUT: {r.status_code} {r.text!r}"
    r = get(herald.ip("a/b"))
    assert r.status_code == 200 and r.text.strip() == "123", "scalars are returned bare"
    assert r.headers["Content-Type"].startswith("application/json")
    assert get(herald.ip("")).json() == {"a": {"b": 123, "c": "x"}}

    # A scalar on the way is replaced by an object holding the new key.
    assert_put_ok(put(herald.ip("a/b/deep", durable=True), True))
    assert get(herald.ip("a")).json() == {"b": {"deep": True}, "c": "x"}
    r = get(herald.ip("a/c/under"))
    assert r.status_code == 404, "an intermediate non-object means 404"

    # Explicit null is stored.
    assert_put_ok(put(herald.ip("n", durable=True), None))
    r = get(herald.ip("n"))
    assert r.status_code == 200 and r.json() is None

    # The Content-Type header is not checked (curl's form default).
    r = request(
        "PUT",
        herald.ip("form", durable=True),
        data='{"k": [1, 2]}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_put_ok(r)
    assert get(herald.ip("form")).json() == {"k": [1, 2]}

    # DELETE removes the key; missing paths are still 202.
    assert_put_ok(delete(herald.ip("a/b", durable=True)))
    assert get(herald.ip("a")).json() == {"c": "x"}
    assert_put_ok(delete(herald.ip("nope/nothing", durable=True)))
    assert_put_ok(delete(herald.ip("a/c/not-an-object", durable=True)))
    assert get(herald.ip("a")).json() == {"c": "x"}

    # DELETE / sets the whole document to null.
    assert_put_ok(delete(herald.ip("", durable=True)))
    r = get(herald.ip(""))
    assert r.status_code == 200 and r.json() is None


def test_http_errors(herald: HeraldServer):
    r = request("PUT", herald.ip("bad", durable=True), data="{not json")
    assert r.status_code >= 400, f"invalid JSON body: {r.status_code} {r.text!r}"
    assert get(herald.ip("bad")).status_code == 404, "invalid body must not be stored"

    r = request("POST", herald.ip("x"), data="1")
    assert r.status_code == 404, f"POST has no route: {r.status_code} {r.text!r}"

    r = request("BREW", herald.ip("x"))
    assert r.status_code == 400, f"non-standard method: {r.status_code} {r.text!r}"
    assert r.headers.get("Content-Type", "").startswith("application/json")
    assert r.json() == {}


# =====================================================================
# 1.3 WebSocket protocol A: which subscribers get what
# =====================================================================
def test_websocket_notification_rules(herald: HeraldServer):
    async def body():
        sub = await ws_connect(herald.ws("a/b"))
        root = await ws_connect(herald.ws(""))
        sibling = await ws_connect(herald.ws("z"))
        try:
            assert await recv_json(sub) is None
            assert await recv_json(root) == {}
            assert await recv_json(sibling) is None

            # Write at an ancestor: descendant subscriber gets its value.
            assert_put_ok(put(herald.ip("a", durable=True), {"b": 7}))
            assert await recv_json(sub) == 7
            assert await recv_json(root) == {"a": {"b": 7}}

            # Descendants are notified even when their value is unchanged.
            assert_put_ok(put(herald.ip("a", durable=True), {"b": 7, "c": 1}))
            assert await recv_json(sub) == 7
            assert await recv_json(root) == {"a": {"b": 7, "c": 1}}

            # Sibling branch: nothing for a/b.
            assert_put_ok(put(herald.ip("a/c", durable=True), 2))
            assert await recv_json(root) == {"a": {"b": 7, "c": 2}}
            await assert_quiet(sub)

            # Write below the subscription: full value at the subscribed path.
            assert_put_ok(put(herald.ip("a/b/d", durable=True), True))
            assert await recv_json(sub) == {"d": True}, "the next message is the full value, not a diff"
            assert await recv_json(root) == {"a": {"b": {"d": True}, "c": 2}}

            # Delete an ancestor: subscriber sees null.
            assert_put_ok(delete(herald.ip("a", durable=True)))
            assert await recv_json(sub) is None
            assert await recv_json(root) == {}

            # The /z subscriber heard nothing of all this.
            await assert_quiet(sibling, 0.2)
            assert_put_ok(put(herald.ip("z", durable=True), "zed"))
            assert await recv_json(sibling) == "zed"
        finally:
            for c in (sub, root, sibling):
                await c.close()

    run(body())


def test_websocket_client_messages_are_ignored(herald: HeraldServer):
    async def body():
        async with await ws_connect(herald.ws("k")) as ws:
            assert await recv_json(ws) is None
            await ws.send("hello")
            await ws.send(b"\x00\x01")
            await assert_quiet(ws)
            assert_put_ok(put(herald.ip("k", durable=True), 1))
            assert await recv_json(ws) == 1

    run(body())


def test_websocket_bad_method_parameter(herald: HeraldServer):
    async def body():
        with pytest.raises(InvalidStatus) as exc:
            await ws_connect(herald.ws("x", method="bogus"))
        assert exc.value.response.status_code == 400
        assert b"expecting 'reusable'" in exc.value.response.body

    run(body())


# =====================================================================
# 1.6 persistence (data-survives-restart.sh / data-survives-crash.sh)
# =====================================================================
def test_data_survives_restart(herald: HeraldServer):
    assert_put_ok(put(herald.ip("foo/a", durable=True), 123))
    assert_put_ok(put(herald.ip("foo/b"), {"x": [1, "two", None]}))
    assert_put_ok(put(herald.ip("bar", durable=True), "baz"))  # orders after foo/b
    before = get(herald.ip("")).json()

    code = herald.stop()  # SIGTERM; SIGKILL only after the stop timeout
    assert code != -9, "herald did not exit within the stop timeout after SIGTERM"
    herald.start()

    r = get(herald.ip("foo/a"))
    assert r.status_code == 200 and r.json() == 123, f"after restart /foo/a: {r.status_code} {r.text!r}"
    assert get(herald.ip("")).json() == before
    assert herald.icepeak_url  # ports may differ after a restart; URLs are refreshed
    conn = websocket.create_connection(herald.ws("foo"), timeout=5)
    try:
        assert json.loads(conn.recv()) == before["foo"]
    finally:
        conn.close()


def test_durable_write_survives_kill9(herald: HeraldServer):
    assert_put_ok(put(herald.ip("foo/a", durable=True), 123))
    r = put(herald.docs("main/x"), {"via": "main api"})
    assert 200 <= r.status_code < 300, f"main API PUT: {r.status_code} {r.text!r}"
    herald.kill9()
    assert herald.last_exit_code == -9
    herald.start()
    r = get(herald.ip("foo/a"))
    assert r.status_code == 200 and r.json() == 123, f"after kill -9 /foo/a: {r.status_code} {r.text!r}"
    r = get(herald.ip("main/x"))
    assert r.status_code == 200 and r.json() == {"via": "main api"}, "main API writes are durable"


# =====================================================================
# 1.5 JWT
# =====================================================================
def test_token_cli_claims(herald_bin: Path):
    tok = cli_token(herald_bin, "foo:r", "bar/1:rw", "baz:w")
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    ice = claims["icepeak"]
    assert ice["version"] == 1
    got = {tuple(e["prefix"]): sorted(e["modes"]) for e in ice["whitelist"]}
    assert got == {("foo",): ["read"], ("bar", "1"): ["read", "write"], ("baz",): ["write"]}

    tok = cli_token(herald_bin, "foo:r", expires=600)
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert abs(claims["exp"] - (time.time() + 600)) < 60, f"exp claim {claims.get('exp')}"


@pytest.mark.parametrize("minted_by", ["pyjwt", "herald-token"])
def test_jwt_http_permissions(auth_herald: HeraldServer, herald_bin: Path, minted_by: str):
    s = auth_herald
    if minted_by == "pyjwt":
        reader = mint(FOO_READ)
        writer = mint([{"prefix": ["foo"], "modes": ["read", "write"]}])
    else:
        reader = cli_token(herald_bin, "foo:r")
        writer = cli_token(herald_bin, "foo:rw")

    assert_put_ok(put(s.ip("foo/x", durable=True), {"v": 1}, headers=auth(writer)))

    r = get(s.ip("foo/x"), headers=auth(reader))
    assert r.status_code == 200 and r.json() == {"v": 1}, f"allowed read: {r.status_code} {r.text!r}"
    r = get(s.ip("foo"), params={"access_token": reader})
    assert r.status_code == 200 and r.json() == {"x": {"v": 1}}, "token in ?access_token="

    assert_json(put(s.ip("foo/x"), 2, headers=auth(reader)), 401, {"error": "not allowed"})
    assert_json(delete(s.ip("foo/x"), headers=auth(reader)), 401, {"error": "not allowed"})
    assert_json(get(s.ip("bar"), headers=auth(reader)), 401, {"error": "not allowed"})
    assert_json(get(s.ip(""), headers=auth(reader)), 401, {"error": "not allowed"})
    assert_json(get(s.ip("foo/x")), 401, {"error": "invalid token format"})
    assert_json(put(s.ip("foo/x"), 3), 401, {"error": "invalid token format"})
    assert get(s.ip("foo/x"), headers=auth(reader)).json() == {"v": 1}, "denied writes changed nothing"


def test_jwt_rejections(auth_herald: HeraldServer):
    s = auth_herald
    url = s.ip("foo")
    now = int(time.time())
    for name, token in [
        ("expired", mint(exp=now - 60)),
        ("not yet valid", mint(nbf=now + 600)),
        ("bad signature", mint(secret=OTHER_SECRET)),
    ]:
        r = get(url, headers=auth(token))
        assert r.status_code == 401 and r.json() == {"data": None}, f"{name}: {r.status_code} {r.text!r}"
        assert r.headers.get("Content-Type", "").startswith("application/json"), name

    r = get(url, headers=auth(jwt.encode({"sub": "nobody"}, SECRET, algorithm="HS256")))
    assert r.status_code == 401, f"missing claim: {r.status_code} {r.text!r}"
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), f"missing claim body {body!r}"

    assert_json(get(url, headers=auth("not-a-jwt")), 401, {"error": "invalid token format"})
    assert_json(get(url, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, {"error": "invalid token format"})

    # The header wins over ?access_token=.
    r = get(url, headers=auth(mint()), params={"access_token": "garbage"})
    assert r.status_code in (200, 404), f"header token must take precedence: {r.status_code} {r.text!r}"
    r = get(url, headers=auth(mint(exp=now - 60)), params={"access_token": mint()})
    assert r.status_code == 401, "an expired header token is not rescued by the query token"

    # Any method other than GET/PUT/DELETE is rejected with auth on.
    r = request("POST", url, data="1", headers=auth(mint([{"prefix": [], "modes": ["read", "write"]}])))
    assert r.status_code == 401, f"POST with auth on: {r.status_code} {r.text!r}"


def test_jwt_cli_token_expires(auth_herald: HeraldServer, herald_bin: Path):
    tok = cli_token(herald_bin, "foo:r", expires=1)
    time.sleep(2.2)
    r = get(auth_herald.ip("foo"), headers=auth(tok))
    assert r.status_code == 401 and r.json() == {"data": None}, f"expired CLI token: {r.status_code} {r.text!r}"


def test_jwt_websocket_handshake(auth_herald: HeraldServer, herald_bin: Path):
    s = auth_herald
    writer = mint([{"prefix": ["foo"], "modes": ["write"]}])
    assert_put_ok(put(s.ip("foo", durable=True), {"hello": "world"}, headers=auth(writer)))

    async def rejected(url: str, **kw):
        with pytest.raises(InvalidStatus) as exc:
            await ws_connect(url, **kw)
        resp = exc.value.response
        return resp.status_code, json.loads(resp.body or b"null")

    async def body():
        status, payload = await rejected(s.ws("foo"))
        assert status == 401 and payload == {"error": "invalid token format"}, (status, payload)
        status, payload = await rejected(s.ws("bar", access_token=mint()))
        assert status == 401 and payload == {"error": "not allowed"}, (status, payload)
        status, payload = await rejected(s.ws("foo", access_token=mint(secret=OTHER_SECRET)))
        assert status == 401 and payload == {"data": None}, (status, payload)
        status, payload = await rejected(s.ws("foo"), additional_headers=auth(writer))
        assert status == 401 and payload == {"error": "not allowed"}, "write-only token cannot subscribe"

        async with await ws_connect(s.ws("foo", access_token=mint())) as ws:
            assert await recv_json(ws) == {"hello": "world"}
        async with await ws_connect(s.ws("foo/hello"), additional_headers=auth(cli_token(herald_bin, "foo:r"))) as ws:
            assert await recv_json(ws) == "world"
            assert_put_ok(put(s.ip("foo/hello", durable=True), "again", headers=auth(writer)))
            assert await recv_json(ws) == "again"

    run(body())


def test_jwt_without_secret_only_decodes(herald_factory):
    s = herald_factory("--enable-jwt-auth")
    any_key = mint([{"prefix": ["foo"], "modes": ["read", "write"]}], secret=OTHER_SECRET)
    assert_put_ok(put(s.ip("foo", durable=True), 5, headers=auth(any_key)))
    r = get(s.ip("foo"), headers=auth(any_key))
    assert r.status_code == 200 and r.json() == 5, f"{r.status_code} {r.text!r}"
    assert_json(get(s.ip("bar"), headers=auth(any_key)), 401, {"error": "not allowed"})
    assert_json(get(s.ip("foo")), 401, {"error": "invalid token format"})


# =====================================================================
# 1.4 WebSocket protocol B (?method=reusable)
# =====================================================================
async def send_json(ws, obj) -> None:
    await ws.send(json.dumps(obj))


def by_path(entries) -> dict:
    return {e["path"]: e["value"] for e in entries}


def test_reusable_subscribe_update_unsubscribe(herald: HeraldServer):
    assert_put_ok(put(herald.ip("a/b", durable=True), {"x": 1}))

    async def body():
        async with await ws_connect(herald.ws("", method="reusable")) as ws:
            await send_json(ws, {"type": "subscribe", "paths": ["a/b", "c"]})
            reply = await recv_json(ws)
            assert reply["type"] == "subscribe" and reply["code"] == 200, reply
            assert reply["message"] == "You've been successfully subscribed to the paths", reply
            assert reply["extra"] == {}, reply
            assert by_path(reply["paths"]) == {"a/b": {"x": 1}, "c": None}, reply

            # Past the first-subscription deadline the connection stays up.
            await asyncio.sleep(1.5)

            assert_put_ok(put(herald.ip("a/b", durable=True), {"x": 2}))
            assert await recv_json(ws) == {"type": "update", "path": "a/b", "value": {"x": 2}}
            assert_put_ok(put(herald.ip("a", durable=True), {"b": 3, "other": 0}))
            assert await recv_json(ws) == {"type": "update", "path": "a/b", "value": 3}
            assert_put_ok(put(herald.ip("c/deep", durable=True), "v"))
            assert await recv_json(ws) == {"type": "update", "path": "c", "value": {"deep": "v"}}
            assert_put_ok(put(herald.ip("elsewhere", durable=True), 1))
            await assert_quiet(ws)

            await send_json(ws, {"type": "unsubscribe", "paths": ["a/b", "never/subscribed"]})
            reply = await recv_json(ws)
            assert reply == {
                "type": "unsubscribe",
                "paths": ["a/b"],
                "code": 200,
                "message": "You've been successfully unsubscribed from the paths",
                "extra": {},
            }, reply

            assert_put_ok(put(herald.ip("a/b", durable=True), 4))
            assert_put_ok(put(herald.ip("c", durable=True), 5))
            assert await recv_json(ws) == {"type": "update", "path": "c", "value": 5}, (
                "no update for the unsubscribed a/b; c still subscribed"
            )

    run(body())


def test_reusable_malformed_paths(herald: HeraldServer):
    async def body():
        async with await ws_connect(herald.ws("", method="reusable")) as ws:
            for kind, msg in [
                ("subscribe", "Subscribe request payload is malformed"),
                ("unsubscribe", "Unsubscribe request payload is malformed"),
            ]:
                await send_json(ws, {"type": kind, "paths": "not-a-list"})
                reply = await recv_json(ws)
                assert reply.get("type") == kind and reply.get("code") == 400, reply
                assert reply.get("message") == msg, reply
                assert "paths" not in reply, reply
                assert "extra" in reply, reply
            # The connection is still usable.
            await send_json(ws, {"type": "subscribe", "paths": ["p"]})
            reply = await recv_json(ws)
            assert reply["code"] == 200 and by_path(reply["paths"]) == {"p": None}, reply

    run(body())


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x01\x02binary", 3002),
        ("{this is not json", 3003),
        ("[1, 2, 3]", 3004),
        ('"a string"', 3004),
        ('{"type": "launch-missiles", "paths": ["a"]}', 3005),
        ('{"paths": ["a"]}', 3005),
    ],
    ids=["binary", "invalid-json", "array", "string", "unknown-type", "missing-type"],
)
def test_reusable_bad_frames_close(herald: HeraldServer, frame, code):
    async def body():
        async with await ws_connect(herald.ws("", method="reusable")) as ws:
            await ws.send(frame)
            got = await expect_close(ws)
            assert got == code, f"close code {got}, expected {code}"

    run(body())


def test_reusable_oversized_payload_closes(herald: HeraldServer):
    async def body():
        async with await ws_connect(herald.ws("", method="reusable"), max_size=None) as ws:
            big = json.dumps({"type": "subscribe", "paths": ["x" * 1_000_100]})
            try:
                await ws.send(big)
            except ConnectionClosed as exc:  # closed while we were still sending
                got = exc.rcvd.code if exc.rcvd else None
            else:
                got = await expect_close(ws)
            assert got == 3001, f"close code {got}, expected 3001 (payload > 1,000,000 bytes)"

    run(body())


def test_reusable_first_subscription_deadline(herald: HeraldServer):
    async def body():
        async with await ws_connect(herald.ws("", method="reusable")) as ws:
            t0 = time.monotonic()
            await expect_close(ws, timeout=5)
            elapsed = time.monotonic() - t0
            assert elapsed >= 0.5, f"closed after {elapsed:.2f}s, before the 1 s deadline"

    run(body())


def test_reusable_jwt(auth_herald: HeraldServer):
    s = auth_herald
    assert_put_ok(put(s.ip("foo/x", durable=True), 1, headers=auth(mint([{"prefix": ["foo"], "modes": ["write"]}]))))

    async def body():
        async with await ws_connect(s.ws("", method="reusable")) as ws:  # handshake needs no token
            await send_json(ws, {"type": "subscribe", "paths": ["foo/x"]})
            reply = await recv_json(ws)
            assert reply["code"] == 401 and reply["message"] == "No authorisation token provided", reply

            await send_json(ws, {"type": "subscribe", "paths": ["foo/x"], "token": "garbage"})
            reply = await recv_json(ws)
            assert reply["code"] == 403, reply
            assert reply["message"].startswith("Error while extracting claim from JWT"), reply

            await send_json(ws, {"type": "subscribe", "paths": ["foo/x", "bar/y"], "token": mint()})
            reply = await recv_json(ws)
            assert reply["code"] == 403, reply
            assert reply["message"] == "Some paths are not authorised by the provided JWT claim", reply
            assert reply["extra"] == {"unauthorisedPaths": [["bar", "y"]]}, reply

            await send_json(ws, {"type": "subscribe", "paths": ["foo/x"], "token": mint()})
            reply = await recv_json(ws)
            assert reply["code"] == 200 and by_path(reply["paths"]) == {"foo/x": 1}, reply

    run(body())


# =====================================================================
# Herald main API (/docs/...) shares the tree with the Icepeak listener
# =====================================================================
def test_main_api_shares_tree(herald: HeraldServer):
    r = get(f"{herald.http_url}/health")
    assert r.status_code == 200, f"/health: {r.status_code} {r.text!r}"

    assert_put_ok(put(herald.ip("shared/from_icepeak", durable=True), {"n": 1}))
    r = get(herald.docs("shared/from_icepeak"))
    assert r.status_code == 200 and r.json() == {"n": 1}, f"main API read: {r.status_code} {r.text!r}"

    async def body():
        async with await ws_connect(herald.ws("shared/from_main")) as ws:
            assert await recv_json(ws) is None
            r = put(herald.docs("shared/from_main"), {"k": [1, 2]})
            assert 200 <= r.status_code < 300, f"main API PUT: {r.status_code} {r.text!r}"
            assert await recv_json(ws) == {"k": [1, 2]}, "main API write pushed to an Icepeak subscriber"
            # Every main-API write is durable: visible immediately.
            r = get(herald.ip("shared/from_main"))
            assert r.status_code == 200 and r.json() == {"k": [1, 2]}
            r = delete(herald.docs("shared/from_main"))
            assert 200 <= r.status_code < 300, f"main API DELETE: {r.status_code} {r.text!r}"
            assert await recv_json(ws) is None

    run(body())
    assert get(herald.ip("shared/from_main")).status_code == 404
    r = get(herald.docs("shared"))
    assert r.status_code == 200 and r.json() == {"from_icepeak": {"n": 1}}


# =====================================================================
# 1.7 metrics listener
# =====================================================================
def subscriber_count(herald: HeraldServer) -> float:
    r = get(herald.metrics("metrics"))
    assert r.status_code == 200, f"metrics: {r.status_code} {r.text!r}"
    values = re.findall(r"^icepeak_subscriber_count(?:\{[^}]*\})?\s+(\S+)", r.text, re.M)
    assert values, f"icepeak_subscriber_count not in metrics output:\n{r.text[:2000]}"
    return sum(float(v) for v in values)


def test_metrics_listener(herald: HeraldServer):
    r = get(herald.metrics("healthcheck"))
    assert r.status_code == 200 and r.content == b"", f"/healthcheck: {r.status_code} {r.text!r}"

    r = get(herald.metrics("metrics"))
    assert r.status_code == 200
    assert "icepeak_subscriber_count" in r.text
    assert get(herald.metrics("any/other/path")).status_code == 200

    async def body():
        base = subscriber_count(herald)
        conns = [await ws_connect(herald.ws(f"m/{i}")) for i in range(3)]
        try:
            for c in conns:
                await recv_json(c)
            deadline = time.monotonic() + 5
            while subscriber_count(herald) < base + 3:
                assert time.monotonic() < deadline, f"icepeak_subscriber_count stayed at {subscriber_count(herald)}"
                await asyncio.sleep(0.1)
        finally:
            for c in conns:
                await c.close()
        deadline = time.monotonic() + 5
        while subscriber_count(herald) > base:
            assert time.monotonic() < deadline, "icepeak_subscriber_count did not drop after closing"
            await asyncio.sleep(0.1)

    run(body())


# =====================================================================
# Process contract: --ready-file lists only the listeners that are on
# =====================================================================
def test_ready_file_lists_enabled_listeners(herald_factory):
    s = herald_factory(http=False, metrics=False)
    assert set(s.ready) == {"icepeak"}, f"ready file: {s.ready}"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", s.ready["icepeak"])
    r = get(s.ip(""))
    assert r.status_code == 200
