"""When to try a hub request again, how long to wait, and what to tell the user when giving up.

Transient failures (HTTP 408/429/5xx, dropped connections, timeouts, bad bytes) are retried with
exponential backoff, or after the wait a rate-limited answer asks for; anything else becomes a
`HubDownloadError` whose one-line message names the fix (and never the token).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# The HTTP library huggingface_hub's session is built on (httpx2 in huggingface_hub 2.x): its
# exceptions are the ones `get_session()` raises, whatever the library is called in a release.
from huggingface_hub.utils import get_token, httpx, parse_ratelimit_headers

from owt.cli import ScriptError

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TOKEN_HELP = (
    "set HF_TOKEN to a read token from https://huggingface.co/settings/tokens "
    "(or run `hf auth login`)"
)

T = TypeVar("T")


class HubDownloadError(ScriptError):
    """A download failed for good; the message is one line that says what to do (exit status 1,
    or 2 for a problem the user must fix first)."""


class Retryable(Exception):
    """A failure worth another attempt (bad bytes, short body) that is not an HTTP error."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: `max_retries` retries per file (or API call) after the first attempt,
    waiting `backoff_seconds` * 2**k (capped at `max_backoff_seconds`, plus up to 10% jitter so
    parallel workers do not retry in lockstep)."""

    max_retries: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    max_rate_limit_seconds: float = 300.0  # the hub's rate-limit windows are 5 minutes

    def wait_seconds(self, failures: int, exc: BaseException | None = None) -> float:
        """Seconds before the next attempt: what the hub asked for (rate limit), else backoff."""
        asked = server_wait_seconds(exc)
        if asked is not None:
            return min(asked, self.max_rate_limit_seconds)
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (failures - 1))
        return base * (1 + 0.1 * random.random())


def server_wait_seconds(exc: BaseException | None) -> float | None:
    """The wait a 429 (or 503) answer asks for: the `t=` of its `RateLimit` header when no
    request remains (`r=0`), else its `Retry-After` (seconds or an HTTP date); None if none."""
    response = exc.response if isinstance(exc, HfHubHTTPError) else None
    if response is None or response.status_code not in (429, 503):
        return None
    # The hub sends RateLimit on every answer: it explains a 429 only when no request remains.
    limit = parse_ratelimit_headers(response.headers) if response.status_code == 429 else None
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: a transient HTTP status, a network error other than
    a misconfigured proxy or URL, or a `Retryable`."""
    if isinstance(exc, Retryable | httpx.TransportError):
        return not isinstance(exc, httpx.UnsupportedProtocol | httpx.ProxyError)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code in TRANSIENT_STATUS
    return False


def explain(exc: BaseException, what: str) -> HubDownloadError:
    """Turn a hub/network exception into a HubDownloadError that names the fix (never the token)."""
    if isinstance(exc, HubDownloadError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return HubDownloadError(f"{what}: HF_HUB_OFFLINE is set; unset it to download.")
    if isinstance(exc, RevisionNotFoundError):
        return HubDownloadError(f"{what}: revision not found; check --revision.")
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubDownloadError(f"{what}: no such file or folder in the repo at this revision.")
    status = exc.response.status_code if isinstance(exc, HfHubHTTPError) else None
    if isinstance(exc, RepositoryNotFoundError | GatedRepoError) or status in (401, 403):
        if get_token() is None:
            return HubDownloadError(
                f"{what}: the hub refused access (HTTP {status}). Check --repo_id; if the repo is "
                f"private or gated, {TOKEN_HELP}."
            )
        return HubDownloadError(
            f"{what}: the hub refused access (HTTP {status}) with the token from HF_TOKEN or "
            "your saved login. Check --repo_id, that the token can read this repo, and that "
            "you accepted the repo's terms if it is gated."
        )
    if status is not None:
        return HubDownloadError(f"{what}: the hub answered HTTP {status}. Try again later.")
    if isinstance(exc, httpx.TransportError):
        return HubDownloadError(
            f"{what}: cannot reach {constants.ENDPOINT} ({type(exc).__name__}). Check the "
            "network (and HF_ENDPOINT if set), then re-run the same command: it resumes."
        )
    return HubDownloadError(f"{what}: {type(exc).__name__}: {exc}")


def call_with_retries(what: str, call: Callable[[], T], retry: RetryPolicy) -> T:
    """Return `call()`, retrying transient failures with backoff; others raise HubDownloadError."""
    failures = 0
    while True:
        try:
            return call()
        except Exception as exc:
            failures += 1
            if not is_transient(exc) or failures > retry.max_retries:
                raise explain(exc, what) from exc
            time.sleep(log_retry(what, exc, failures, retry))


def log_retry(what: str, exc: BaseException, failures: int, retry: RetryPolicy) -> float:
    """Say what failed and how long we wait; return that wait."""
    pause = retry.wait_seconds(failures, exc)
    reason = short_reason(exc)
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        if exc.response.status_code == 429:
            hint = "" if get_token() is not None else f"; a token raises the limit: {TOKEN_HELP}"
            reason += f" (rate limited: waiting {pause:.0f} s{hint})"
    print(f"{what}: {reason}; retry {failures}/{retry.max_retries}", file=sys.stderr, flush=True)
    return pause


def short_reason(exc: BaseException) -> str:
    """A few words for the retry log line: "HTTP 503", the Retryable's message, or its type."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, Retryable):
        return str(exc)
    return type(exc).__name__
