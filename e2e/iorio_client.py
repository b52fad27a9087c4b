"""A small IorioDB client for the interop suite, written for Herald's tests in
the spirit of IorioDB's own `tools/iorio.py` (seed-contracts 2.8): a
`Connection` that logs in with `POST /sessions` and then sends the session
token in `X-Session`, and a `Subscriptions` helper that tracks, per stream,
the next seqnum to ask `/listen` for.

Like iorio.py it is built on `requests` and returns the raw
`requests.Response`, so tests can check status codes, headers and bodies
themselves. Unlike iorio.py:

* every call has a timeout (`timeout=`, default `IO_TIMEOUT`);
* grant/revoke can send the principal as `role` (the server contract) or as
  `username` (what iorio.py sends), chosen with `key=`;
* proxies from the environment are never used (everything is 127.0.0.1).

A `Connection` holds one `requests.Session`; give each thread its own
(`Connection.clone()`), as a `Session` is not meant to be shared.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable, Optional
from urllib.parse import quote, urlencode

import requests

#: Default seconds for one HTTP request (connect and each read).
IO_TIMEOUT = 5.0

JSON = "application/json"
JSON_PATCH = "application/json-patch+json"


def _segment(name: str) -> str:
    return quote(name, safe="")


class Connection:
    """One client of an IorioDB-compatible server at `base_url`
    (e.g. "http://127.0.0.1:8080")."""

    def __init__(
        self,
        base_url: str,
        token: Optional[str] = None,
        *,
        username: Optional[str] = None,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.username = username
        self.timeout = timeout
        self.http = requests.Session()
        self.http.trust_env = False

    def clone(self) -> "Connection":
        """A new connection (own HTTP session) with the same login."""
        return Connection(self.base_url, self.token, username=self.username, timeout=self.timeout)

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------ plumbing
    def url(self, path: str, query: Optional[Iterable[tuple[str, Any]] | dict[str, Any]] = None) -> str:
        url = f"{self.base_url}/{path.lstrip('/')}"
        if query:
            url += "?" + urlencode(list(query.items()) if isinstance(query, dict) else list(query))
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Any = None,
        auth: bool = True,
        **kw: Any,
    ) -> requests.Response:
        """`method` on `path` with the session token in `X-Session` (unless
        `auth=False` or there is no token)."""
        headers = dict(kw.pop("headers", None) or {})
        if auth and self.token and "X-Session" not in headers:
            headers["X-Session"] = self.token
        kw.setdefault("timeout", self.timeout)
        return self.http.request(method, self.url(path, query), headers=headers, **kw)

    def post_json(self, path: str, body: Any, **kw: Any) -> requests.Response:
        headers = {"Content-Type": JSON, **(kw.pop("headers", None) or {})}
        return self.request("POST", path, data=json.dumps(body), headers=headers, **kw)

    # -------------------------------------------------------------- session
    def authenticate(self, username: str, password: str) -> requests.Response:
        """`POST /sessions`; on 201 with `ok` and `token`, keeps the token."""
        resp = self.post_json("sessions", {"username": username, "password": password}, auth=False)
        if resp.status_code == 201:
            body = resp.json()
            if body.get("ok") and body.get("token"):
                self.token = body["token"]
                self.username = body.get("username", username)
        return resp

    def whoami(self) -> requests.Response:
        return self.request("GET", "sessions")

    # -------------------------------------------------------------- streams
    @staticmethod
    def stream_path(bucket: str, stream: str) -> str:
        return f"streams/{_segment(bucket)}/{_segment(stream)}"

    def send(self, bucket: str, stream: str, data: Any, **kw: Any) -> requests.Response:
        """Append `data` (as JSON) to a stream: `POST /streams/b/s`."""
        return self.post_json(self.stream_path(bucket, stream), data, **kw)

    def send_raw(
        self, bucket: str, stream: str, body: bytes | str, content_type: Optional[str] = JSON
    ) -> requests.Response:
        headers = {"Content-Type": content_type} if content_type else {}
        return self.request("POST", self.stream_path(bucket, stream), data=body, headers=headers)

    def send_patch(
        self, bucket: str, stream: str, patch: Any, content_type: str = JSON_PATCH
    ) -> requests.Response:
        """Apply an RFC 6902 patch to the stream's last event: `PATCH /streams/b/s`."""
        body = patch if isinstance(patch, (bytes, str)) else json.dumps(patch)
        return self.request(
            "PATCH", self.stream_path(bucket, stream), data=body, headers={"Content-Type": content_type}
        )

    def query(
        self,
        bucket: str,
        stream: str,
        limit: Optional[int | str] = None,
        from_: Optional[int | str] = None,
        download: Optional[str] = None,
    ) -> requests.Response:
        """`GET /streams/b/s?limit&from&download`."""
        q = {}
        if limit is not None:
            q["limit"] = limit
        if from_ is not None:
            q["from"] = from_
        if download is not None:
            q["download"] = download
        return self.request("GET", self.stream_path(bucket, stream), query=q)

    def delete_stream(self, bucket: str, stream: str) -> requests.Response:
        return self.request("DELETE", self.stream_path(bucket, stream))

    def list_buckets(self) -> requests.Response:
        return self.request("GET", "buckets/")

    def list_streams(self, bucket: str) -> requests.Response:
        return self.request("GET", f"streams/{_segment(bucket)}")

    def ping(self) -> requests.Response:
        return self.request("GET", "ping")

    # ------------------------------------------------------------ users/ACL
    def create_user(self, username: str, password: str) -> requests.Response:
        return self.post_json("users/", {"username": username, "password": password})

    def list_users(self) -> requests.Response:
        return self.request("GET", "users/")

    def change_password(self, username: str, password: str) -> requests.Response:
        return self.request(
            "PUT",
            "users/",
            data=json.dumps({"username": username, "password": password}),
            headers={"Content-Type": JSON},
        )

    @staticmethod
    def access_path(bucket: str, stream: Optional[str] = None) -> str:
        if stream is None:
            return f"access/{_segment(bucket)}/"
        return f"access/{_segment(bucket)}/{_segment(stream)}"

    def access(self, bucket: str, stream: Optional[str] = None) -> requests.Response:
        return self.request("GET", self.access_path(bucket, stream))

    def set_access(
        self,
        action: str,
        role: str,
        permission: str,
        bucket: str,
        stream: Optional[str] = None,
        *,
        key: str = "role",
    ) -> requests.Response:
        """`POST /access/b/[s]` with `{"action", key: role, "permission"}`;
        `key="username"` sends what iorio.py sends."""
        body = {"action": action, key: role, "permission": permission}
        return self.post_json(self.access_path(bucket, stream), body)

    def grant(self, role: str, permission: str, bucket: str, stream: Optional[str] = None, **kw: Any):
        return self.set_access("grant", role, permission, bucket, stream, **kw)

    def revoke(self, role: str, permission: str, bucket: str, stream: Optional[str] = None, **kw: Any):
        return self.set_access("revoke", role, permission, bucket, stream, **kw)

    # --------------------------------------------------------------- listen
    def listen_query(self, subs: "Subscriptions") -> list[tuple[str, str]]:
        """The `/listen` query: the token as `jwt` (the only place IorioDB
        looks for it there) and one `s` per stream."""
        q: list[tuple[str, str]] = []
        if self.token:
            q.append(("jwt", self.token))
        q += subs.query()
        return q

    def listen_url(self, subs: "Subscriptions", scheme: str = "http") -> str:
        url = self.url("listen", self.listen_query(subs))
        if scheme == "ws":
            url = "ws" + url[len("http"):]
        return url

    def listen(self, subs: "Subscriptions", timeout: Optional[float] = None) -> requests.Response:
        """One long-poll `GET /listen`. On 200, call `subs.update_seqnums(resp.json())`
        before polling again."""
        return self.http.get(
            self.listen_url(subs), timeout=timeout if timeout is not None else self.timeout
        )

    def listen_sse(
        self, subs: "Subscriptions", last_event_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> requests.Response:
        """A streaming `GET /listen` asking for server-sent events; feed the
        response to an SSE parser (e.g. `sseclient.SSEClient`)."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        t = timeout if timeout is not None else self.timeout
        return self.http.get(self.listen_url(subs), headers=headers, stream=True, timeout=(t, t))


class Subscriptions:
    """The streams a listener follows and the next seqnum wanted from each,
    as iorio.py's `Subscriptions`: after each answer, `update_seqnums` moves
    every stream to the last id seen + 1."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, str], Optional[int]] = {}
        self._lock = threading.Lock()

    def add(self, bucket: str, stream: str, from_: Optional[int] = None) -> "Subscriptions":
        with self._lock:
            self._next[(bucket, stream)] = from_
        return self

    def next_seq(self, bucket: str, stream: str) -> Optional[int]:
        with self._lock:
            return self._next.get((bucket, stream))

    def query(self) -> list[tuple[str, str]]:
        with self._lock:
            return [
                ("s", f"{b}:{s}" if n is None else f"{b}:{s}:{n}")
                for (b, s), n in self._next.items()
            ]

    def update_seqnums(self, entries: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            for entry in entries:
                meta = entry.get("meta") or {}
                key = (meta.get("bucket"), meta.get("stream"))
                if key not in self._next or not isinstance(meta.get("id"), int):
                    continue
                if meta.get("reset"):  # the stream was recreated: numbering restarts
                    self._next[key] = 1
                    continue
                nxt = meta["id"] + 1
                current = self._next[key]
                if current is None or nxt > current:
                    self._next[key] = nxt
