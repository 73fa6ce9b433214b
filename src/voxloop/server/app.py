"""`voxloop serve`: the voice page, the WebSocket protocol, /health and /metrics.

One process holds the models (STT, TTS) and the LLM client; every browser tab is its own
conversation on them. Bound to 127.0.0.1 by default; any other host needs a token, checked on
every route (/health and /metrics stay open on loopback). Every route answers only the names
the server is reached by (the Host header: loopback, the bound address, --allow-host ones), so
a web page cannot rebind its own name to 127.0.0.1 and drive voxloop; and the WebSocket accepts
only the server's own Origin (plus any configured ones).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.events import TurnDone
from voxloop.llm import ChatModel
from voxloop.server.openai_audio import openai_routes
from voxloop.server.realtime import realtime_route
from voxloop.server.session import MAX_CONTROL_BYTES, Session, close_if_stuck, read_while_read
from voxloop.settings import Settings
from voxloop.stt import Transcriber
from voxloop.tts import Synthesizer

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}
# Sessions on /metrics, by protocol: voxloop's WebSocket (/ws), OpenAI's Realtime WebSocket, and
# OpenAI's audio endpoints, where one HTTP request is one session (docs/protocol.md, "Metrics");
# with `serve --wyoming`, Wyoming too (added by wyoming_serve.py: a connection that asks for
# anything is one).
PROTOCOLS = ("voxloop", "realtime", "transcriptions", "speech")
HTTP_PROTOCOLS = {"/v1/audio/transcriptions": "transcriptions", "/v1/audio/speech": "speech"}


@dataclass
class ServerState:
    settings: Settings
    transcriber: Transcriber
    chat: ChatModel
    synthesizer: Synthesizer
    token: str | None = None
    origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"  # the address it is bound to
    allowed_hosts: tuple[str, ...] = ()  # more names it is reached by (--allow-host)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    open_sessions: int = 0
    # All conversations share the models through small FIFO pools: work is served in the order
    # it comes, one model copy each, and a busy session cannot take more than its turn.
    stt_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="stt")
    )
    tts_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tts")
    )

    def __post_init__(self) -> None:
        r = self.registry
        self.turns = Counter("voxloop_turns", "Turns answered", registry=r)
        self.errors = Counter("voxloop_errors", "Turns that failed", registry=r)
        self.sessions = Gauge("voxloop_sessions_open", "Conversations open now", registry=r)
        by = ["protocol"]
        self.sessions_started = Counter("voxloop_sessions", "Sessions started", by, registry=r)
        self.sessions_active = Gauge("voxloop_sessions_active", "Sessions in progress", by, registry=r)
        for protocol in PROTOCOLS:
            self.list_protocol(protocol)
        self.audio_in = Counter("voxloop_audio_in_seconds", "Microphone audio accepted", registry=r)
        self.audio_dropped = Counter(
            "voxloop_audio_dropped_seconds", "Microphone audio dropped: sent too fast", registry=r
        )
        buckets = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
        self.latency = Histogram(
            "voxloop_stage_seconds", "Per-stage latency of a turn", ["stage"], buckets=buckets, registry=r
        )

    @contextlib.asynccontextmanager
    async def open_session(self, session: Any, protocol: str = "voxloop") -> AsyncIterator[None]:
        """A WebSocket conversation of ``protocol``: counted while open, closed (its reply stream
        to the LLM too) when the client goes, however it goes."""
        self.sessions.inc()
        self.open_sessions += 1
        self.sessions_started.labels(protocol=protocol).inc()
        try:
            with self.session_active(protocol):
                yield
        except WebSocketDisconnect:
            pass
        finally:
            self.sessions.dec()
            self.open_sessions -= 1
            await session.close()

    def list_protocol(self, protocol: str) -> None:
        """Show ``protocol``'s sessions on /metrics from now, at 0 until its first one."""
        self.sessions_started.labels(protocol=protocol)
        self.sessions_active.labels(protocol=protocol)

    @contextlib.contextmanager
    def session_counted(self, protocol: str) -> Iterator[None]:
        """A session of ``protocol`` that is neither a WebSocket nor an HTTP request (a Wyoming
        connection): started now, active until the block ends."""
        self.sessions_started.labels(protocol=protocol).inc()
        with self.session_active(protocol):
            yield

    @contextlib.contextmanager
    def session_active(self, protocol: str) -> Iterator[None]:
        active = self.sessions_active.labels(protocol=protocol)
        active.inc()
        try:
            yield
        finally:
            active.dec()

    def count_turn(self, turn: TurnDone) -> None:
        self.turns.inc()
        if turn.error:
            self.errors.inc()
        for key, value in turn.timings.items():
            if key.endswith("_ms"):
                self.latency.labels(stage=key[:-3]).observe(value / 1000)

    def host_ok(self, value: str | None) -> bool:
        """Whether a Host header names this server. An IP address cannot be rebound, so any
        loopback one is fine, and any at all on a wildcard bind (LAN clients use the machine's
        addresses); a name must be a loopback one, the bound one or an --allow-host one."""
        try:
            name = urlsplit(f"//{value}").hostname if value else None
        except ValueError:  # a malformed [IPv6] literal
            return False
        if not name:
            return False
        bound = self.host.strip("[]").lower()
        if name in LOOPBACK or name == bound or name in {h.lower() for h in self.allowed_hosts}:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or bound in WILDCARD

    def token_ok(self, connection: HTTPConnection) -> bool:
        """The token from ``?token=`` or ``Authorization: Bearer``, compared in constant time (as
        bytes: compare_digest refuses non-ASCII strings)."""
        if self.token is None:
            return True
        given = connection.query_params.get("token")
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if given is None and scheme.lower() == "bearer":
            given = credentials.strip()
        return given is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.token.encode("utf-8", "surrogatepass")
        )


class CountedRequests:
    """An HTTP route whose requests are sessions on /metrics: active while served (a streamed
    answer to its end), started once answered with success (a refused one is no session)."""

    def __init__(self, app: ASGIApp, state: ServerState, protocol: str) -> None:
        self.app, self.state, self.protocol = app, state, protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                self.state.sessions_started.labels(protocol=self.protocol).inc()
            await send(message)

        with self.state.session_active(self.protocol):
            await self.app(scope, receive, sending)


def counted(state: ServerState, routes: list[Route]) -> list[Route]:
    """``routes`` with the requests of those in HTTP_PROTOCOLS counted (not in openai_audio.py:
    what a session is, is /metrics' business)."""
    for route in routes:
        if (protocol := HTTP_PROTOCOLS.get(route.path)) is not None:
            route.app = CountedRequests(route.app, state, protocol)
    return routes


class HostGuard:
    """Refuses, on every route and the WebSocket, a Host the server does not answer to: the
    defence against DNS rebinding. Not Starlette's TrustedHostMiddleware: it answers a bare 400
    with no hint, and cannot say "any IP address on a wildcard bind"."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if self.state.host_ok(host):
            await self.app(scope, receive, send)
            return
        log.info("refused a request for Host %r", host)
        response = PlainTextResponse(
            f"Forbidden: this server does not answer to Host {host!r}; "
            "to allow a name, start it with voxloop serve --allow-host NAME.",
            403,
        )
        if scope["type"] == "http":
            await response(scope, receive, send)
        else:
            await _refuse(WebSocket(scope, receive, send), response)


async def _refuse(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket handshake with an HTTP status and a one-line reason."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # the server answers 403, without the reason
        await websocket.close(code=1008, reason=bytes(response.body).decode()[:120])


def _origin_ok(state: ServerState, websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: the token (if any) is the gate
    host = websocket.headers.get("host", "")
    own = {f"http://{host}", f"https://{host}"}
    return origin in own or origin in state.origins


def page() -> str:
    return resources.files("voxloop.server").joinpath("page.html").read_text(encoding="utf-8")


def build_app(state: ServerState) -> Starlette:
    # Off loopback, how busy the server is and which model it runs are the token holder's
    # business too; on loopback, monitoring stays as simple as a curl.
    status_open = state.host in LOOPBACK

    def unauthorized() -> Response:
        return PlainTextResponse(
            "Unauthorized: pass the token printed by voxloop serve as ?token=… or Authorization: Bearer ….",
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def index(request: Request) -> Response:
        if not state.token_ok(request):
            return PlainTextResponse(
                "Forbidden: open the URL with ?token=… as printed by voxloop serve.", 403
            )
        return HTMLResponse(page())

    async def health(request: Request) -> Response:
        if not (status_open or state.token_ok(request)):
            return unauthorized()
        return JSONResponse({"status": "ok", "model": state.chat.model, "sessions": state.open_sessions})

    async def metrics(request: Request) -> Response:
        if not (status_open or state.token_ok(request)):
            return unauthorized()
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    async def ws(websocket: WebSocket) -> None:
        if not _origin_ok(state, websocket):
            await _refuse(websocket, PlainTextResponse("Forbidden: origin not allowed.", 403))
            return
        if not state.token_ok(websocket):
            await _refuse(websocket, PlainTextResponse("Forbidden: bad or missing token.", 403))
            return
        await websocket.accept()

        async def send(message: dict[str, Any]) -> None:
            await websocket.send_json(message)

        async def read() -> bool:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return False
            if message.get("bytes") is not None:
                session.audio(message["bytes"])
            elif message.get("text") is not None:
                session.control(message["text"][: MAX_CONTROL_BYTES + 1])
            return True

        session = Session(state, send, websocket.send_bytes)
        async with state.open_session(session):
            await websocket.send_json(session.hello())
            # Until the client leaves, or stops reading what it is sent (the session gives it up).
            await read_while_read(session.printer, read)
        await close_if_stuck(websocket, session.printer)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.chat.connect()  # in the server's own event loop
        yield
        await state.chat.aclose()

    return Starlette(
        lifespan=lifespan,
        middleware=[Middleware(HostGuard, state=state)],
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", metrics),
            WebSocketRoute("/ws", ws),
            *counted(state, openai_routes(state)),  # /v1/audio/transcriptions, /speech, /v1/models
            realtime_route(state),  # /v1/realtime: OpenAI's Realtime API (WebSocket)
        ],
    )


def new_token() -> str:
    return secrets.token_urlsafe(18)
