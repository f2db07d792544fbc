"""The review view's direct decision route: a tiny local HTTP endpoint in the ``review`` process.

Why: a decision sent through FiftyOne's ``/operators/execute`` spends most of its time in the
App's operator machinery (resolving the plugin, building a context), not in the fsync. The
view instead POSTs decisions here, and the answer comes once the journal line is fsync'd and
the sample mirrored (``dataset.record_decisions``: the same checks, sha256 rule and order as
the operators). The operators stay as the fallback when this route cannot be reached.

Who may post: only a request carrying the per-session random token (handed to the view with
its settings, never stored in the database) and, when a browser sends an ``Origin``, only the
App's own origin. Bodies are sent as ``text/plain`` JSON so the browser needs no CORS preflight
(one round trip less); the token in the body is what keeps other pages out.

The pure part (``DecisionRoute.handle``) takes a path, an origin and a body and returns
(status, answer); ``start_route`` serves it on 127.0.0.1 with a ``ThreadingHTTPServer``.
Requests are handled one at a time (a lock), so the journal holds them in the order they came.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.review import view as review_view

MAX_BODY = 256 * 1024  # a full triage page is ~10 KB
PATHS = ("/decide", "/decide_page", "/undo")

# decide(requests, via, extra) -> answer dict; undo(count) -> answer dict. Both raise
# RequestError / ReviewError for a refusal the reviewer should read.
DecideFn = Callable[[list, str, dict | None], dict]
UndoFn = Callable[[int], dict]


def new_token() -> str:
    return secrets.token_urlsafe(32)


def app_origins(address: str, port: int) -> frozenset[str]:
    """The origins the App page can have: its address, and the loopback names for a local App."""
    hosts = {address, "localhost", "127.0.0.1"} - {"", "0.0.0.0", "::"}
    return frozenset(f"http://{host}:{port}" for host in hosts)


@dataclass
class DecisionRoute:
    """Checks a request (token, origin, body) and hands it to ``decide`` / ``undo``."""

    token: str
    origins: frozenset[str]
    decide: DecideFn
    undo: UndoFn
    refusals: (type[Exception] | tuple[type[Exception], ...]) = review_view.RequestError
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cors_origin(self, origin: str | None) -> str | None:
        """The origin to allow in the answer (only the App's own)."""
        return origin if origin in self.origins else None

    def handle(self, path: str, origin: str | None, body: bytes) -> tuple[int, dict]:
        if path not in PATHS:
            return 404, {"ok": False, "message": f"no route {path!r} (one of {', '.join(PATHS)})"}
        if origin is not None and origin not in self.origins:
            return 403, {"ok": False, "message": f"origin {origin!r} is not the review App's"}
        try:
            params = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return 400, {"ok": False, "message": "the body must be a JSON object"}
        if not isinstance(params, dict):
            return 400, {"ok": False, "message": "the body must be a JSON object"}
        token = params.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token.encode()):
            return 403, {"ok": False, "message": "wrong or missing session token: reload the review App page"}
        with self.lock:  # one at a time: the journal keeps the order the view sent them in
            try:
                return 200, self._dispatch(path, params)
            except self.refusals as exc:
                return 409, {"ok": False, "message": str(exc)}
            except Exception as exc:  # noqa: BLE001 (database down, disk full...: the view must show "not saved")
                return 500, {"ok": False, "message": f"not saved: {type(exc).__name__}: {exc}"}

    def _dispatch(self, path: str, params: dict) -> dict:
        via = params.get("via")
        via = via if isinstance(via, str) and via else None
        if path == "/decide":
            decision, sample_id = params.get("decision"), params.get("sample_id")
            if decision not in ("accept", "reject") or not isinstance(sample_id, str) or not sample_id:
                raise review_view.RequestError(f"bad request: decision={decision!r} sample_id={sample_id!r}")
            sha = params.get("mask_sha256")
            if not isinstance(sha, str) or not sha:
                raise review_view.RequestError(f"{sample_id}: the mask_sha256 shown is required")
            seconds = review_view.seconds_value(params.get("seconds_on_screen"))
            return self.decide([(sample_id, decision, sha, seconds)], via or "key", None)
        if path == "/decide_page":
            requests = review_view.page_request(params.get("decisions"))
            return self.decide(requests, via or "triage", {"page_size": len(requests)})
        count = params.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= review_view.MAX_PAGE:
            raise review_view.RequestError(f"bad request: count={count!r}")
        return self.undo(count)


def dataset_route(dataset, reviewer: str, journal_dir, origins: Iterable[str], token: str) -> DecisionRoute:
    """A route that journals into ``journal_dir`` and mirrors on ``dataset`` (the queue)."""
    from pipeline.review import dataset as review_dataset

    def decide(requests, via, extra):
        timings: dict = {}
        events, _ = review_dataset.record_decisions(dataset, requests, reviewer, journal_dir, via=via,
                                                    extra=extra, with_progress=False, timings=timings)
        rejected = sum(e.decision == "reject" for e in events)
        message = (f"{events[0].decision}ed {events[0].id}" if extra is None else
                   f"page of {len(events)}: {len(events) - rejected} accepted, {rejected} rejected")
        return {"ok": True, "message": message, "id": events[0].id, "ids": [e.id for e in events],
                "timings": timings, "path": "route"}

    def undo(count):
        undone = []
        progress = None
        for _ in range(count):
            event, sample_id, progress = review_dataset.undo_last(dataset, reviewer, journal_dir)
            if event is None:
                break
            undone.append((event, sample_id))
        if not undone:
            return {"ok": False, "message": "nothing to undo", "ids": [], "path": "route"}
        message = f"undid the decision on {undone[0][0].id}" if count == 1 else \
            f"undid {len(undone)} decision(s): {', '.join(u.id for u, _ in undone)}"
        out = {"ok": True, "message": message, "id": undone[0][0].id, "ids": [u.id for u, _ in undone],
               "sample_ids": [s for _, s in undone], "path": "route"}
        if progress is not None:
            out["progress"] = progress.as_dict()
        return out

    return DecisionRoute(token=token, origins=frozenset(origins), decide=decide, undo=undo,
                         refusals=(review_view.RequestError, review_dataset.ReviewError))


def _handler_for(route: DecisionRoute) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the browser reuses one connection

        def _answer(self, status: int, answer: dict | None) -> None:
            data = b"" if answer is None else json.dumps(answer).encode("utf-8")
            self.send_response(status)
            allowed = route.cors_origin(self.headers.get("Origin"))
            if allowed:
                self.send_header("Access-Control-Allow-Origin", allowed)
                self.send_header("Vary", "Origin")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_OPTIONS(self):  # a preflight, should a browser send one
            self.send_response(204)
            allowed = route.cors_origin(self.headers.get("Origin"))
            if allowed:
                self.send_header("Access-Control-Allow-Origin", allowed)
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                return self._answer(413, {"ok": False, "message": f"a body of 0..{MAX_BODY} bytes is needed"})
            body = self.rfile.read(length)
            status, answer = route.handle(self.path, self.headers.get("Origin"), body)
            self._answer(status, answer)

        def do_GET(self):  # no reads here: the view reads through the App
            self._answer(405, {"ok": False, "message": "POST only"})

        def log_message(self, format, *args):  # quiet: the review command prints its own
            pass

    return Handler


def start_route(route: DecisionRoute, port: int = 0) -> ThreadingHTTPServer:
    """Serve ``route`` on 127.0.0.1 (``port`` 0: any free one) in a daemon thread; the server's
    ``server_address[1]`` is the port. Stop it with ``shutdown()``."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(route))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="review-decision-route", daemon=True).start()
    return server


def route_url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def as_settings(url: str | None, token: str | None) -> dict[str, Any]:
    """What the view is told about the route (nothing when there is none: it uses the operators)."""
    return {"route_url": url, "route_token": token} if url and token else {}
