"""`voxloop serve`: the voice page, the WebSocket protocol, /health and /metrics.

One process holds the models (STT, TTS) and the LLM client; every browser tab is its own
conversation on them. Bound to 127.0.0.1 by default; any other host needs a token, checked on
the page and the WebSocket, and the WebSocket accepts only the server's own Origin (plus any
configured ones).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voxloop.events import TurnDone
from voxloop.llm import ChatModel
from voxloop.server.session import MAX_CONTROL_BYTES, Session
from voxloop.settings import Settings
from voxloop.stt import Transcriber
from voxloop.tts import Synthesizer

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServerState:
    settings: Settings
    transcriber: Transcriber
    chat: ChatModel
    synthesizer: Synthesizer
    token: str | None = None
    origins: tuple[str, ...] = ()
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
        buckets = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
        self.latency = Histogram(
            "voxloop_stage_seconds", "Per-stage latency of a turn", ["stage"], buckets=buckets, registry=r
        )

    def count_turn(self, turn: TurnDone) -> None:
        self.turns.inc()
        if turn.error:
            self.errors.inc()
        for key, value in turn.timings.items():
            if key.endswith("_ms"):
                self.latency.labels(stage=key[:-3]).observe(value / 1000)


def _token_ok(state: ServerState, given: str | None) -> bool:
    if state.token is None:
        return True
    return given is not None and hmac.compare_digest(given, state.token)


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
    async def index(request: Request) -> Response:
        if not _token_ok(state, request.query_params.get("token")):
            return PlainTextResponse(
                "Forbidden: open the URL with ?token=… as printed by voxloop serve.", 403
            )
        return HTMLResponse(page())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": state.chat.model, "sessions": state.open_sessions})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    async def ws(websocket: WebSocket) -> None:
        if not _origin_ok(state, websocket):
            await websocket.close(code=1008, reason="origin not allowed")
            return
        if not _token_ok(state, websocket.query_params.get("token")):
            await websocket.close(code=1008, reason="bad or missing token")
            return
        await websocket.accept()

        async def send(message: dict[str, Any]) -> None:
            await websocket.send_json(message)

        session = Session(state, send, websocket.send_bytes)
        await websocket.send_json(session.hello())
        state.sessions.inc()
        state.open_sessions += 1
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    session.audio(message["bytes"])
                elif message.get("text") is not None:
                    session.control(message["text"][: MAX_CONTROL_BYTES + 1])
        except WebSocketDisconnect:
            pass
        finally:
            state.sessions.dec()
            state.open_sessions -= 1
            await session.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.chat.connect()  # in the server's own event loop
        yield
        await state.chat.aclose()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", metrics),
            WebSocketRoute("/ws", ws),
        ],
    )


def new_token() -> str:
    return secrets.token_urlsafe(18)
