"""A small client for the datastore's KV API over the kit's traced HTTP client.

`urls` are tried in order when a node cannot be reached, so a list of endpoints keeps
working while one is down; any HTTP answer (even an error) ends the search. With a
`token`, every request carries `Authorization: Bearer <token>` (the datastore refuses
requests without a credential whose roles allow them: 401/403, raised as
`DatastoreRefused`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from yardarm_kit.httpclient import HttpClient, HttpResponse, UpstreamError

MAX_LIST_PAGES = 1000
# The problem type of the datastore's 422 for an Idempotency-Key reused for another request.
KEY_REUSED_TYPE = "urn:yardarm:datastore:idempotency-key-reused"


def _problem_type(response: HttpResponse) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else None


class DatastoreUnavailable(Exception):
    """No datastore node answered usefully (unreachable, timeout or a 5xx)."""


class DatastoreRefused(DatastoreUnavailable):
    """The datastore refused the credential (401) or what it allows (403): to the
    caller's own clients the datastore is as good as unavailable (a misconfiguration),
    while a caller that acts for someone else may pass the refusal on."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"{what}: the datastore answered {status}")
        self.status = status


@dataclass(frozen=True)
class KvRecord:
    key: str
    value: Any
    version: int


@dataclass(frozen=True)
class PutResult:
    """`applied` for a 2xx; `conflict` for a 409 (version mismatch); `replayed` when the
    datastore answered from an earlier write with the same Idempotency-Key; `key_reused`
    when that key was recorded for another request (422): the datastore records a key
    only for a write it applied, so that earlier write took effect."""

    status: int
    version: int | None
    replayed: bool
    key_reused: bool = False

    @property
    def applied(self) -> bool:
        return 200 <= self.status < 300

    @property
    def conflict(self) -> bool:
        return self.status == 409


class DatastoreClient:
    def __init__(
        self,
        http: HttpClient,
        urls: list[str],
        *,
        timeout_s: float = 5.0,
        token: str | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one datastore URL is needed")
        self._http = http
        self._urls = list(urls)
        self._timeout_s = timeout_s
        self._token = token

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Any:
        credential = token or self._token
        if credential is not None:
            headers = {**(headers or {}), "Authorization": f"Bearer {credential}"}
        last: BaseException | None = None
        for base in self._urls:
            try:
                response = await self._http.request(
                    method, base + path, json=json, headers=headers, timeout=self._timeout_s
                )
            except UpstreamError as exc:
                last = exc
                continue
            if response.status >= 500:
                last = DatastoreUnavailable(
                    f"datastore {base} answered {response.status} to {method} {path}"
                )
                # Another replica may have a leader in view; only a read or a keyed write
                # is safe to send again (a keyed write applies once).
                if method == "GET" or (headers and "Idempotency-Key" in headers):
                    continue
                raise last
            if response.status in (401, 403):
                raise DatastoreRefused(response.status, f"{method} {path}")
            return response
        raise DatastoreUnavailable(
            f"no datastore reachable for {method} {path} (tried {', '.join(self._urls)}): {last!r}"
        )

    async def get(self, key: str, *, token: str | None = None) -> KvRecord | None:
        """The record under `key`, or None when there is none (`token`: as in `put`)."""
        response = await self._request("GET", "/kv/" + quote(key, safe="/"), token=token)

        if response.status == 404:
            return None
        if response.status != 200:
            raise DatastoreUnavailable(f"GET {key}: unexpected status {response.status}")
        body = response.json()
        return KvRecord(str(body["key"]), body["value"], int(body["version"]))

    async def put(
        self,
        key: str,
        value: Any,
        *,
        if_version: int | None = None,
        idempotency_key: str | None = None,
        token: str | None = None,
    ) -> PutResult:
        """Write `value`; a version mismatch is a result (`conflict`), not an exception.

        `token` writes with another credential than the client's own (the gateway's
        admin API writes routing changes with its caller's admin credential)."""
        body: dict[str, Any] = {"value": value}
        if if_version is not None:
            body["if_version"] = if_version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = await self._request(
            "PUT", "/kv/" + quote(key, safe="/"), json=body, headers=headers, token=token
        )
        replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
        version: int | None = None
        if 200 <= response.status < 300:
            version = int(response.json()["version"])
        elif response.status == 422 and _problem_type(response) == KEY_REUSED_TYPE:
            return PutResult(response.status, None, False, key_reused=True)
        elif response.status not in (404, 409):
            raise DatastoreUnavailable(f"PUT {key}: unexpected status {response.status}")
        return PutResult(response.status, version, replayed)

    async def list(self, prefix: str, *, page_size: int = 100) -> list[KvRecord]:
        """Every record whose key starts with `prefix`, following the pagination."""
        records: list[KvRecord] = []
        after: str | None = None
        for _ in range(MAX_LIST_PAGES):
            query = {"prefix": prefix, "limit": str(page_size)}
            if after is not None:
                query["after"] = after
            response = await self._request("GET", "/kv?" + urlencode(query))
            if response.status != 200:
                raise DatastoreUnavailable(f"list {prefix!r}: unexpected status {response.status}")
            body = response.json()
            records.extend(
                KvRecord(str(i["key"]), i["value"], int(i["version"])) for i in body["items"]
            )
            after = body.get("next")
            if not after:
                return records
        raise DatastoreUnavailable(f"list {prefix!r} did not end after {MAX_LIST_PAGES} pages")
