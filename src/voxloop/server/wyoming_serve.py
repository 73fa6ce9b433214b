"""`voxloop serve --wyoming`: the Wyoming server in the same process and event loop as the HTTP
and WebSocket protocols, on the same loaded models (Whisper, the voice, the LLM client) and the
same worker pools, so a Home Assistant satellite and a browser tab take their turns on one set of
models. Its sessions are counted on ``/metrics`` under ``protocol="wyoming"``.

Order matters both ways. The Wyoming port is taken before the HTTP server starts, so a port in
use is one line and no server half starts. It is closed in the HTTP app's shutdown, before the
app closes the LLM client its connections use, and before uvicorn hands a caught SIGTERM or
Ctrl-C back to the process: anything after that point would be cut short.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from voxloop.server.wyoming import (
    NO_AUTH_WARNING,
    WyomingOptions,
    WyomingServer,
    is_loopback,
    reached_at,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from voxloop.server.app import ServerState

PROTOCOL = "wyoming"  # its label on /metrics

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def on_state(state: ServerState, options: WyomingOptions) -> WyomingServer:
    """A Wyoming server on ``state``'s models and pools, counting its sessions in its metrics."""
    state.list_protocol(PROTOCOL)
    return WyomingServer(
        state.settings,
        state.transcriber,
        state.synthesizer,
        state.chat,
        options,
        pools=(state.stt_pool, state.tts_pool),
        session=lambda: state.session_counted(PROTOCOL),
    )


def _closing_first(inner: Lifespan, close: Callable[[], Awaitable[None]]) -> Lifespan:
    """``inner`` (the app's own startup and shutdown), with ``close`` run at the start of its
    shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as value:
            try:
                yield value
            finally:
                await close()

    return lifespan


@contextlib.asynccontextmanager
async def beside(
    app: Starlette, state: ServerState, options: WyomingOptions, say: Callable[[str], None]
) -> AsyncIterator[WyomingServer]:
    """Serve Wyoming for the length of the block, in which the HTTP server runs ``app``."""
    server = on_state(state, options)
    await state.chat.connect()  # the model's name, for `info`; the app's startup reads it again
    await server.start(port_flag="port to --wyoming")
    # Starlette keeps the app's lifespan here; wrapped, not replaced: the app's own startup and
    # shutdown (the LLM client's) still run, around the Wyoming server's close.
    app.router.lifespan_context = _closing_first(app.router.lifespan_context, server.close)
    where = f"{options.host}:{options.port}"
    say(
        f"  Wyoming (Home Assistant): tcp://{where} (speech to text, voice, conversation agent); "
        f"in Home Assistant: Add integration → Wyoming Protocol, host {reached_at(options.host)}, "
        f"port {options.port}"
    )
    if not is_loopback(options.host):
        say("  " + NO_AUTH_WARNING.format(where=where) + " The access token does not apply to it.")
    try:
        yield server
    finally:
        await server.close()  # already closed unless the HTTP server never started
