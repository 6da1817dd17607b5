"""The hub stand-in's HTTP side: the request handler, the request log and the faults.

`HubHandler` answers the endpoints huggingface_hub 2.x really calls, with the answers and headers
huggingface.co sends (as recorded from the live hub in 2026):

    GET  /api/{models,datasets}/REPO[/revision/REV]   repo info at REV: "sha", "siblings",
                                                     "cardData" (the README's YAML front matter)
    GET  /api/{models,datasets}/REPO/tree/REV[/PATH]  listing, at most `page_size` entries per
                                                     answer, then a `Link: <...cursor=...>;
                                                     rel="next"` header; LFS files carry
                                                     lfs.oid = sha256 and a xetHash
    POST /api/{models,datasets}/REPO/paths-info/REV  the same entries, for the given paths
    GET  /api/{models,datasets}/REPO/refs            branches, converts, tags (+ pullRequests
                                                     with ?include_prs=1)
    HEAD|GET /[datasets/]REPO/resolve/REV/PATH       git files: 200 + ETag + X-Repo-Commit;
                                                     LFS files: 302 to the "CDN" + X-Linked-Etag,
                                                     X-Linked-Size, X-Repo-Commit
    HEAD|GET /cdn/xet-bridge-us/ID/XETHASH?...       the LFS bytes at a signed URL; Range -> 206

The server (tests/hub_stub.py's HubStub) makes a subclass whose `hub` attribute is itself: the
repos to serve, the faults to inject, the request log and the rate-limit counts.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import mimetypes
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit

from hub_repo import CREATED_AT, MAIN_TIME, StubFile, StubRepo, StubRevision, cloudfront_b64

if TYPE_CHECKING:
    from hub_stub import HubStub

PAGE_SIZE = 1000  # tree entries per answer on the hub ...
EXPAND_PAGE_SIZE = 50  # ... and with expand=true (see HfApi.list_repo_tree)
RATE_WINDOW_S = 300  # the hub's fixed rate-limit window
CDN_KEY_PAIR_ID = "K3RPWS32NSSJCE"
QUOTAS = {"api": (500, 1000), "resolvers": (3000, 5000)}  # per window: anonymous, with a token


@dataclass
class RequestRecord:
    method: str
    path: str  # URL path, unquoted, without the query string
    status: int
    range: str | None
    authorization: str | None
    query: str = ""  # the raw query string
    raw_path: str = ""  # the URL path as sent (revisions arrive quoted: refs%2Fpr%2F1)
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def is_file_get(self) -> bool:
        """A GET that fetches file bytes (the resolve redirect or the CDN answer)."""
        return self.method == "GET" and ("/resolve/" in self.path or self.path.startswith("/cdn/"))


FaultKind = Literal["status", "drop", "corrupt", "stall", "bad_range"]


@dataclass
class Fault:
    kind: FaultKind
    times: int
    status: int
    matches: Callable[[str, str], bool]
    after: int  # matching requests to let through first
    headers: dict[str, str] = field(default_factory=dict)  # "status": sent with the answer
    start: int = 0  # "bad_range": where the answer's Content-Range starts


def file_request(method: str, path: str) -> bool:
    return method == "GET" and ("/resolve/" in path or path.startswith("/cdn/"))


def any_request(method: str, path: str) -> bool:
    return True


# Headers of every hub answer (recorded from huggingface.co; CloudFront's own left out).
_HUB_HEADERS = {
    "Access-Control-Allow-Origin": "https://huggingface.co",
    "Access-Control-Expose-Headers": (
        "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,"
        "Accept-Ranges,Content-Range,X-Linked-Size,X-Linked-ETag,X-Xet-Hash"
    ),
    "Vary": "Origin",
    "X-Powered-By": "huggingface-moon",
}
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json; charset=utf-8"


def _rate_limit_message(bucket: str, authenticated: bool) -> str:
    """The hub's 429 message (as users have quoted it)."""
    quota = QUOTAS[bucket][authenticated]
    return (
        f"We had to rate limit you, you hit the quota of {quota} {bucket} requests per 5 minutes "
        "period. Upgrade to a PRO user or Team/Enterprise organization account "
        "(https://hf.co/pricing) to get higher limits. See https://huggingface.co/docs/hub/rate-limits"
    )


def _html_error(status: int, reason: str) -> bytes:
    return (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _parse_range(value: str, total: int) -> tuple[int, int] | None | Literal["unsatisfiable"]:
    """(start, end) of a single-range `Range` header; None if it is not one (then ignored)."""
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec or "-" not in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if not first:  # suffix: the last N bytes
            count = int(last)
            return (max(total - count, 0), total - 1) if count and total else "unsatisfiable"
        start, end = int(first), int(last) if last else total - 1
    except ValueError:
        return None
    if start >= total:
        return "unsatisfiable"
    if end < start:
        return None
    return start, min(end, total - 1)


class HubHandler(BaseHTTPRequestHandler):
    """One request to the stand-in hub (a new instance per request, as http.server makes)."""

    hub: HubStub  # set by HubStub on the subclass it serves with
    protocol_version = "HTTP/1.1"  # keep-alive, like the real hub; every answer has a length

    def log_message(self, format: str, *args: object) -> None:  # the request log replaces it
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        # Without http.server's "Server: BaseHTTP/..." header: the hub sends none.
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the client, or a "drop" fault, already closed the connection
            pass

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # -- plumbing -------------------------------------------------------------------------

    def _handle(self) -> None:
        url = urlsplit(self.path)
        self.raw_path = url.path
        self.raw_query = url.query
        # Split first, unquote each segment after: "refs%2Fpr%2F1" stays one segment.
        self.segments = [unquote(part) for part in url.path.strip("/").split("/")]
        self.url_path = unquote(url.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.is_cdn = self.segments[0] == "cdn"
        self.bucket = "api" if self.segments[0] == "api" else "resolvers"
        # Logged on arrival (status filled in when sent): a stalled answer is in the log
        # from the moment it was asked for.
        self.record = RequestRecord(
            self.command,
            self.url_path,
            0,
            self.headers.get("Range"),
            self.headers.get("Authorization"),
            url.query,
            url.path,
        )
        self.hub.record(self.record)
        fault = self.hub.take_fault(("status",), self.command, self.url_path)
        if fault is not None:
            self._send_fault(fault)
        else:
            self._route()

    def _send_fault(self, fault: Fault) -> None:
        status, headers = fault.status, dict(fault.headers)
        reason = self.responses.get(status, ("Error",))[0]
        if self.is_cdn or status >= 500:  # from CloudFront or the load balancer, not the app
            return self._send_bytes(
                _html_error(status, reason), status, {"Content-Type": "text/html", **headers}
            )
        if status == 429:
            message = _rate_limit_message(self.bucket, "Authorization" in self.headers)
        else:
            message = reason
        self._send_json({"error": message}, status, {"X-Error-Message": message, **headers})

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.record.status = status
        self.send_response(status)
        if not self.is_cdn:
            ratelimit, policy = self.hub.rate_limit(self.bucket, "Authorization" in self.headers)
            request_id = f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"
            headers = {
                **_HUB_HEADERS,
                "RateLimit": ratelimit,
                "RateLimit-Policy": policy,
                "X-Request-Id": request_id,
                **headers,
            }
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_bytes(self, data: bytes, status: int = 200, headers: dict | None = None) -> None:
        self._start(status, {"Content-Length": str(len(data)), **(headers or {})})
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, payload: object, status: int = 200, headers: dict | None = None) -> None:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
        headers = {
            "Content-Type": _JSON,
            "ETag": f'W/"{len(body):x}-{digest}"',
            **(headers or {}),
        }
        self._send_bytes(body, status, headers)

    def _error(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        """An error as the hub's API sends it: JSON body, X-Error-Code and -Message."""
        headers = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})}
        self._send_json({"error": message}, status, {**headers, **(extra or {})})

    def _text_error(self, status: int, code: str, message: str, extra: dict | None = None) -> None:
        """An error as resolve/ sends it: the message as plain text."""
        headers = {"Content-Type": _TEXT, "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send_bytes(message.encode(), status, {**headers, **(extra or {})})

    # -- routing --------------------------------------------------------------------------

    def _route(self) -> None:
        parts = self.segments
        if parts[0] == "cdn":
            return self._cdn(parts[1:])
        if parts[0] == "api" and len(parts) >= 3 and parts[1] in ("models", "datasets"):
            return self._api(parts[1][:-1], parts[2:])
        repo_type = "model"
        if parts[0] == "datasets":
            repo_type, parts = "dataset", parts[1:]
        if "resolve" in parts:
            cut = parts.index("resolve")
            return self._resolve(repo_type, "/".join(parts[:cut]), parts[cut + 1 :])
        self._error(404, "", "Sorry, we can't find the page you are looking for.")

    def _find_repo(self, repo_type: str, parts: list[str]) -> tuple[StubRepo | None, list[str]]:
        for size in (2, 1):  # "namespace/name" before a bare "name"
            repo = self.hub.repos.get((repo_type, "/".join(parts[:size])))
            if repo is not None:
                return repo, parts[size:]
        return None, parts

    def _authorized(self, repo: StubRepo) -> bool:
        if repo.token is None:
            return True
        given = self.headers.get("Authorization")
        if given is None:
            self._error(401, "RepoNotFound", "Repository not found")
            return False
        if given != f"Bearer {repo.token}":
            self._error(401, "", "Invalid credentials in Authorization header")
            return False
        return True

    def _api(self, repo_type: str, parts: list[str]) -> None:
        repo, rest = self._find_repo(repo_type, parts)
        if repo is None:
            # The hub answers 401 for a repo it will not show you, whether or not it exists.
            return self._error(401, "RepoNotFound", "Repository not found")
        if not self._authorized(repo):
            return None
        action = rest[0] if rest else "revision"
        if action == "refs" and len(rest) == 1 and self.command == "GET":
            return self._refs(repo)
        name = rest[1] if len(rest) > 1 else "main"
        revision = repo.revision(name)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {name}")
        if action == "revision" and len(rest) <= 2 and self.command in ("GET", "HEAD"):
            return self._send_json(self._repo_info(repo, revision))
        if action == "tree" and self.command in ("GET", "HEAD"):
            return self._tree(revision, "/".join(rest[2:]))
        if action == "paths-info" and self.command == "POST" and len(rest) == 2:
            form = parse_qs(self.body.decode())
            expand = form.get("expand", ["False"])[0].lower() in ("true", "1")
            known = set(revision.entries) | revision.folders()
            wanted = list(dict.fromkeys(p.strip("/") for p in form.get("paths", [])))
            return self._send_json([revision.tree_entry(p, expand) for p in wanted if p in known])
        return self._error(404, "", "Sorry, we can't find the page you are looking for.")

    def _repo_info(self, repo: StubRepo, revision: StubRevision) -> dict:
        card = revision.card_data()
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("true", "1")
        siblings = []
        for path, entry in revision.entries.items():
            sibling: dict = {"rfilename": path}
            if blobs:
                sibling.update(blobId=entry.oid, size=len(entry.data))
                if entry.lfs:
                    sibling["lfs"] = {
                        "sha256": entry.sha256,
                        "size": len(entry.data),
                        "pointerSize": entry.pointer_size,
                    }
            siblings.append(sibling)
        info: dict = {
            "_id": repo.mongo_id,
            "id": repo.repo_id,
            "sha": revision.commit,
            "lastModified": revision.last_modified,
            "private": repo.token is not None,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": _tags(repo, revision, card or {}),
            "siblings": siblings,
            "createdAt": CREATED_AT,
            "usedStorage": repo.used_storage(),
        }
        if "/" in repo.repo_id:
            info["author"] = repo.repo_id.split("/")[0]
        if repo.repo_type == "model":
            info.update(_model_fields(repo, revision, card or {}))
        else:
            if card is not None:
                info["cardData"] = card
                if card.get("paperswithcode_id"):
                    info["paperswithcode_id"] = card["paperswithcode_id"]
            description = " ".join(revision.card_text().split())[:300]
            if description:
                info["description"] = description
        wanted = self.query.get("expand", []) + self.query.get("expand[]", [])
        if wanted:  # only what was asked for (the hub always adds _id and id)
            info = {k: v for k, v in info.items() if k in {"_id", "id", *wanted}}
        return info

    def _refs(self, repo: StubRepo) -> None:
        include_prs = self.query.get("include_prs", ["0"])[0].lower() in ("1", "true")
        group = {
            "branch": "branches",
            "convert": "converts",
            "tag": "tags",
            "pr": "pullRequests",
        }
        payload: dict[str, list[dict]] = {name: [] for name in group.values()}
        for revision in repo.revisions.values():
            payload[group[revision.kind]].append(
                {"name": revision.name, "ref": revision.ref, "targetCommit": revision.commit}
            )
        payload["pullRequests"].sort(key=lambda ref: int(ref["name"]))
        if not include_prs:
            del payload["pullRequests"]
        self._send_json(payload)

    def _tree(self, revision: StubRevision, folder: str) -> None:
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        expand = self.query.get("expand", ["false"])[0].lower() in ("true", "1")
        folder = folder.strip("/")
        if folder and folder not in revision.folders():
            return self._error(
                404, "EntryNotFound", f'{folder} does not exist on "{revision.name}"'
            )
        prefix = f"{folder}/" if folder else ""
        paths = [
            path
            for path in revision.paths()
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
        ]
        first = 0
        cursor = self.query.get("cursor", [None])[0]
        if cursor is not None:
            try:
                after = json.loads(base64.urlsafe_b64decode(cursor))["file_name"]
            except (ValueError, KeyError, TypeError):
                return self._error(400, "", "Invalid cursor")
            first = bisect.bisect_right(paths, after)
        size = min(self.hub.page_size, EXPAND_PAGE_SIZE) if expand else self.hub.page_size
        page = paths[first : first + size]
        headers = {}
        if first + size < len(paths):
            token = json.dumps({"file_name": page[-1]}).encode()
            query = [(k, v) for k, v in parse_qsl(self.raw_query, True) if k != "cursor"]
            query.append(("cursor", base64.urlsafe_b64encode(token).decode()))
            headers["Link"] = f'<{self.hub.url}{self.raw_path}?{urlencode(query)}>; rel="next"'
        self._send_json([revision.tree_entry(path, expand) for path in page], 200, headers)

    def _resolve(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository not found")
        if not self._authorized(repo):
            return None
        name, path = (rest[0], "/".join(rest[1:])) if rest else ("main", "")
        revision = repo.revision(name)
        if revision is None:
            return self._text_error(404, "RevisionNotFound", f"Invalid rev id: {name}")
        entry = revision.entries.get(path)
        commit = {"X-Repo-Commit": revision.commit, "Accept-Ranges": "bytes"}
        if entry is None:
            return self._text_error(404, "EntryNotFound", "Entry not found", commit)
        if entry.lfs:
            location = self._signed_cdn_url(repo, path, entry)
            # No ETag here (the hub sends none on this 302), and no X-Xet-Hash or xet
            # Link: with hf_xet installed huggingface_hub would switch to the Xet protocol.
            return self._send_bytes(
                f"Found. Redirecting to {location}".encode(),
                302,
                {
                    "Content-Type": _TEXT,
                    "Location": location,
                    "Cache-Control": "no-store",
                    "Vary": "Origin, Accept",
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(len(entry.data)),
                    **commit,
                },
            )
        name_only = path.rsplit("/", 1)[-1]
        content_type = mimetypes.guess_type(name_only)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type == "application/json":
            content_type += "; charset=utf-8"
        self._serve_file(
            entry,
            f'"{entry.oid}"',
            {
                "Content-Type": content_type,
                "Content-Disposition": _disposition(name_only),
                "Content-Security-Policy": "default-src 'none'; sandbox",
                **commit,
            },
        )

    def _signed_cdn_url(self, repo: StubRepo, path: str, entry: StubFile) -> str:
        cdn_path = f"/cdn/xet-bridge-us/{repo.mongo_id}/{entry.xet_hash}"
        expires = int(time.time()) + 3600
        resource = f"{self.hub.cdn_url.removesuffix('/cdn')}{cdn_path}"
        condition = {"DateLessThan": {"AWS:EpochTime": expires}}
        policy = {"Statement": [{"Resource": resource + "*", "Condition": condition}]}
        query = {
            "X-Xet-Cas-Uid": "public",
            "response-content-disposition": _disposition(path.rsplit("/", 1)[-1]),
            "Expires": str(expires),
            "Policy": cloudfront_b64(json.dumps(policy, separators=(",", ":")).encode()),
            "Signature": self.hub.sign(cdn_path, expires),
            "Key-Pair-Id": CDN_KEY_PAIR_ID,
        }
        return f"{resource}?{urlencode(query)}"

    def _cdn(self, parts: list[str]) -> None:
        """A signed CloudFront URL: 403 without a valid signature or once expired."""
        query = {k: v[0] for k, v in self.query.items()}
        expires = query.get("Expires", "")
        if "Key-Pair-Id" not in query or "Signature" not in query:
            return self._cdn_denied("MissingKey", "Missing Key-Pair-Id query parameter")
        valid = expires.isdigit() and hmac.compare_digest(
            query["Signature"], self.hub.sign(self.raw_path, int(expires))
        )
        if not valid or int(expires) < time.time():
            return self._cdn_denied("AccessDenied", "Access denied")
        entry = None
        if len(parts) == 3 and parts[0] == "xet-bridge-us":
            repo = next((r for r in self.hub.repos.values() if r.mongo_id == parts[1]), None)
            entry = repo.find_lfs(parts[2]) if repo is not None else None
        if entry is None:
            return self._cdn_denied("NoSuchKey", "The specified key does not exist.", 404)
        self._serve_file(
            entry,
            f'"{entry.xet_hash}"',
            {
                "Content-Type": "application/octet-stream",
                "Content-Disposition": query.get("response-content-disposition", ""),
                "Last-Modified": formatdate(MAIN_TIME, usegmt=True),
                "Cache-Control": "public, max-age=604800, immutable, s-maxage=604800",
                "Via": "1.1 stub.cloudfront.net (CloudFront)",
                "X-Cache": "Miss from cloudfront",
            },
        )

    def _cdn_denied(self, code: str, message: str, status: int = 403) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ).encode()
        self._send_bytes(body, status, {"Content-Type": "text/xml"})

    def _serve_file(self, entry: StubFile, etag: str, extra: dict[str, str]) -> None:
        data, total = entry.data, len(entry.data)
        headers = {"ETag": etag, "Accept-Ranges": "bytes", **extra}
        status, start = 200, 0
        wanted = _parse_range(self.headers.get("Range") or "", total)
        if wanted == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{total}"
            return self._send_bytes(b"", 416, headers)
        if wanted is not None:
            start, end = wanted
            data, status = data[start : end + 1], 206
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        fault = None
        if self.command == "GET" and wanted is not None:
            fault = self.hub.take_fault(
                ("bad_range",), self.command, self.url_path, lambda f: f.start != start
            )
        if fault is not None:  # the bytes from elsewhere, labelled as such
            data = entry.data[fault.start :]
            headers["Content-Range"] = f"bytes {fault.start}-{total - 1}/{total}"
            return self._send_bytes(data, 206, headers)
        if self.command == "GET":
            fault = self.hub.take_fault(("drop", "corrupt", "stall"), self.command, self.url_path)
        if fault is None:
            return self._send_bytes(data, status, headers)
        if fault.kind == "corrupt":
            middle = len(data) // 2
            bad = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64])
            return self._send_bytes(bad + data[middle + 64 :], status, headers)
        # "drop" and "stall": promise the whole body, send half of it, hang up (later).
        self._start(status, {"Content-Length": str(len(data)), **headers})
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if fault.kind == "stall":
            self.hub.wait_for_release(60)
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def _disposition(name: str) -> str:
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"


def _tags(repo: StubRepo, revision: StubRevision, card: dict) -> list[str]:
    """The hub's tags: the card's own, its metadata (datasets: "key:value"; models: library,
    language and pipeline bare, "license:X"), the data format, the region."""

    def values(key: str) -> list[str]:
        found = card.get(key) or []
        return [str(v) for v in (found if isinstance(found, list) else [found])]

    tags = values("tags")
    if repo.repo_type == "dataset":
        for key in ("task_categories", "task_ids", "language", "license", "size_categories"):
            tags += [f"{key}:{value}" for value in values(key)]
        if any(p.endswith(".parquet") for p in revision.entries):
            tags += ["format:parquet", "library:datasets"]
    else:
        tags += values("library_name") + values("pipeline_tag") + values("language")
        tags += [f"license:{value}" for value in values("license")]
    return [*dict.fromkeys(tags), "region:us"]


def _model_fields(repo: StubRepo, revision: StubRevision, card: dict) -> dict:
    """What a model's info adds (keys as recorded from the hub)."""
    config: dict = {}
    if "config.json" in revision.entries:
        try:
            full = json.loads(revision.entries["config.json"].data)
        except ValueError:
            full = {}
        config = {k: full[k] for k in ("architectures", "model_type") if k in full}
    fields = {
        "modelId": repo.repo_id,
        "cardData": card,
        "config": config,
        "model-index": card.get("model-index"),
        "spaces": [],
        "transformersInfo": {},
        "widgetData": {},
    }
    library = card.get("library_name") or ("transformers" if config else None)
    if library:
        fields["library_name"] = library
    if card.get("pipeline_tag"):
        fields["pipeline_tag"] = card["pipeline_tag"]
    return fields
