"""Reaching the review database: wait while it starts, then one clear line if it never answers.

On a busy machine FiftyOne's own ``mongod`` can take longer to answer than pymongo's 30 s
server selection, and a shared MongoDB can be restarting; both deserve a wait with a
message rather than a ``ConnectionError`` traceback. Refusals that waiting cannot fix
(a bad URI, wrong credentials, no ``mongod`` binary) end at once. Passwords never reach
a message.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Callable
from urllib.parse import parse_qsl, urlencode

from pipeline.errors import StageError

RETRY_PAUSE_S = 2.0
ATTEMPT_TIMEOUT_S = (0.5, 10.0)  # each try's server-selection timeout, clamped to what is left
_SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key", re.IGNORECASE)


class DatabaseUnavailable(StageError):
    """The review database did not answer in time, or refused us."""


class _Fatal(Exception):
    """A refusal that waiting cannot fix."""


def redact_uri(uri: str) -> str:
    """The URI with its password (and secret-looking query values) replaced by ***."""
    head, sep, query = uri.partition("?")
    head = re.sub(r"^([A-Za-z0-9+.-]+://[^:@/]*):[^@/]*@", r"\1:***@", head)
    if sep:
        pairs = [(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe=":/,*")
    return head + sep + query


def describe_database(uri: str | None, database_dir: str | None) -> str:
    if uri:
        return f"the MongoDB at {redact_uri(uri)}"
    return f"FiftyOne's own database (a mongod FiftyOne starts, data in {database_dir})"


def advice(uri: str | None) -> str:
    if uri:
        return ("check that it is running and reachable from here and that the URI is right "
                "(--database-uri, FIFTYONE_DATABASE_URI or review.database_uri)")
    return ("the machine may be too busy for mongod to start in time: run the command again or raise "
            "review.database_wait_s; check that the data folder is writable and that no stuck mongod holds "
            "it (FIFTYONE_DATABASE_DIR moves it; --database-uri uses a MongoDB of your own)")


def wait_until_connected(attempt: Callable[[float], None], reset: Callable[[], None], wait_s: float, what: str,
                         what_to_do: str, log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                         clock: Callable[[], float] = time.monotonic) -> int:
    """Call ``attempt(timeout_s)`` until it returns or ``wait_s`` has passed; return the tries.

    ``attempt`` raises ``_Fatal`` (via ``classify``) for a refusal worth no wait, anything
    else for "not answering yet"; ``reset`` forgets a half-made connection between tries.
    """
    deadline = clock() + wait_s
    tries = 0
    announced = False
    while True:
        tries += 1
        remaining = max(0.0, deadline - clock())
        timeout = min(max(remaining / 3, ATTEMPT_TIMEOUT_S[0]), ATTEMPT_TIMEOUT_S[1])  # a few tries per wait
        try:
            attempt(timeout)
            return tries
        except _Fatal as exc:
            reset()
            raise DatabaseUnavailable(f"{what} refused the connection: {exc}; {what_to_do}") from None
        except Exception as exc:  # noqa: BLE001 - "not yet": classified by attempt
            reset()
            last = _reason(list(_chain(exc))[-1])  # the root cause says more than FiftyOne's wrapper
        if not announced and wait_s > 0:  # said at the first refusal, even if the wait is already over
            log(f"waiting for {what} to answer (up to {wait_s:g} s, review.database_wait_s): {last}")
            announced = True
        if clock() >= deadline:
            count = f"{tries} {'try' if tries == 1 else 'tries'}"
            raise DatabaseUnavailable(f"{what} did not answer within {wait_s:g} s ({count}; last: {last}); {what_to_do}")
        sleep(min(RETRY_PAUSE_S, max(0.0, deadline - clock())))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.split(r" \(configured timeouts|, Timeout: ", text)[0]  # pymongo's topology dump adds nothing
    if len(text) > 160:
        text = text[:160] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> BaseException:
    """``_Fatal`` for refusals that waiting cannot fix, else ``exc`` itself (try again)."""
    import pymongo.errors as pme

    fatal_types: tuple = (pme.ConfigurationError, pme.OperationFailure, PermissionError)
    retry_types: tuple = (pme.ConnectionFailure, ConnectionError, TimeoutError)
    # FiftyOne's own types, when it is loaded (it cannot have raised them otherwise)
    config, service = sys.modules.get("fiftyone.core.config"), sys.modules.get("fiftyone.core.service")
    fatal_types += tuple(getattr(m, n) for m, n in ((config, "FiftyOneConfigError"),
                                                    (service, "ServiceExecutableNotFound")) if hasattr(m, n))
    retry_types += tuple(getattr(m, n) for m, n in ((service, "ServiceListenTimeout"),) if hasattr(m, n))
    chain = list(_chain(exc))
    if not any(isinstance(e, fatal_types) for e in chain) and any(isinstance(e, retry_types) for e in chain):
        return exc
    root = chain[-1]
    detail = _reason(exc) if root is exc else f"{_reason(exc)} (because {_reason(root)})"
    return _Fatal(detail)  # a refusal, or something unexpected: waiting will not help


def connect_fiftyone(wait_s: float, log: Callable[[str], None] = print) -> None:
    """Connect FiftyOne to its database now (it would otherwise connect on first use and
    fail with a traceback), waiting up to ``wait_s`` for one that is slow or restarting."""
    import fiftyone as fo
    from fiftyone.core.odm import database as fodb

    uri = fo.config.database_uri
    what = describe_database(uri, getattr(fo.config, "database_dir", None))

    def attempt(timeout_s: float) -> None:
        kwargs = fodb._connection_kwargs
        kwargs["serverSelectionTimeoutMS"] = int(timeout_s * 1000)
        try:
            service = getattr(fodb, "_db_service", None)
            if not uri and service is not None and "port" not in kwargs \
                    and not os.environ.get("FIFTYONE_PRIVATE_DATABASE_PORT"):
                # mongod was started by an earlier try but had not opened its port yet
                port = service.port
                kwargs["port"] = port
                os.environ["FIFTYONE_PRIVATE_DATABASE_PORT"] = str(port)
            fodb._connect()
            fodb.get_db_conn().command("ping")
        except Exception as exc:  # noqa: BLE001 - sorted into "wait" and "give up"
            verdict = classify(exc)
            if verdict is exc:
                raise
            raise verdict from exc
        finally:
            kwargs.pop("serverSelectionTimeoutMS", None)

    def reset() -> None:
        try:
            fodb._disconnect()
        except Exception:  # noqa: BLE001 - nothing to forget
            pass

    tries = wait_until_connected(attempt, reset, wait_s, what, advice(uri), log=log)
    if tries > 1:
        log(f"connected to {what}")
