"""`voxloop serve`: many spoken conversations at once, from browser tabs, on shared models."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from voxloop.errors import ConfigError
from voxloop.llm import ChatModel
from voxloop.settings import Settings

log = logging.getLogger(__name__)


def serve(
    settings: Settings,
    urls: list[str],
    host: str,
    port: int,
    token: str | None,
    origins: tuple[str, ...],
    say: Callable[[str], None],
) -> None:
    import uvicorn

    from voxloop.app import make_chat
    from voxloop.printer import HumanPrinter
    from voxloop.server.app import LOOPBACK, ServerState, build_app, new_token
    from voxloop.stt.whisper import WhisperTranscriber
    from voxloop.tts.hibari_tts import HibariSynthesizer

    if host not in LOOPBACK and token is None:
        token = new_token()  # reachable from other machines: never without a token
    printer = HumanPrinter()
    probe = make_chat(urls, settings, printer)
    asyncio.run(_check(probe))  # a clear error now, not a traceback at the first turn
    transcriber = WhisperTranscriber(settings.stt)
    synthesizer = HibariSynthesizer(settings.tts)
    transcriber.warm_up()
    synthesizer.warm_up()
    state = ServerState(
        settings, transcriber, make_chat(urls, settings, printer), synthesizer, token, origins
    )
    shown = "localhost" if host in LOOPBACK else host
    say(f"voxloop is listening on http://{shown}:{port}/" + (f"?token={token}" if token else ""))
    try:
        uvicorn.run(build_app(state), host=host, port=port, log_level="warning", ws_max_size=1 << 20)
    except OSError as exc:
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc}). Pass another --port.") from None


async def _check(chat: ChatModel) -> None:
    try:
        await chat.connect()
    finally:
        await chat.aclose()
