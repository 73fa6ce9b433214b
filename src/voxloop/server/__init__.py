"""`voxloop serve`: many spoken conversations at once, from browser tabs, on shared models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING

from voxloop.errors import ConfigError
from voxloop.llm import ChatModel
from voxloop.settings import Settings

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

    from voxloop.server.app import ServerState
    from voxloop.server.tls import TlsFiles
    from voxloop.server.wyoming import WyomingOptions

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5  # open conversations get this long to end before the server stops anyway


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C does, so that every ``finally`` (the embedded LLM
    server's among them) runs. A BaseException, so no ``except Exception`` swallows it."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Make SIGTERM a graceful stop for the block: uvicorn catches it, closes the connections,
    then raises it again once it has returned; Python's default action would then kill the
    process on the spot and leave its children (the embedded llama-server) running. Here it
    raises :class:`Terminated` instead, and the block ends normally."""

    def terminated(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    except Terminated:
        log.info("SIGTERM: stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    settings: Settings,
    urls: list[str],
    host: str,
    port: int,
    token: str | None,
    origins: tuple[str, ...],
    say: Callable[[str], None],
    allowed_hosts: tuple[str, ...] = (),
    tls: TlsFiles | None = None,
    wyoming: WyomingOptions | None = None,
) -> None:
    """Serve the voice page until stopped; over HTTPS with ``tls`` (see :func:`tls.tls_files`);
    with ``wyoming``, the Wyoming protocol too, on the same models (see ``wyoming_serve.py``)."""
    import uvicorn

    from voxloop.app import make_chat
    from voxloop.printer import HumanPrinter
    from voxloop.server.app import LOOPBACK, ServerState, build_app, new_token
    from voxloop.server.session import WS_MAX_BYTES
    from voxloop.server.tls import WILDCARD, announce, machine_names
    from voxloop.stt.whisper import WhisperTranscriber
    from voxloop.tts.hibari_tts import HibariSynthesizer

    if host not in LOOPBACK and token is None:
        token = new_token()  # reachable from other machines: never without a token
    names = allowed_hosts
    if tls is not None and host.strip("[]") in WILDCARD:
        names = (*allowed_hosts, *machine_names())  # in the certificate; NAME.local is printed
    printer = HumanPrinter()
    probe = make_chat(urls, settings, printer)
    asyncio.run(_check(probe))  # a clear error now, not a traceback at the first turn
    transcriber = WhisperTranscriber(settings.stt)
    synthesizer = HibariSynthesizer(settings.tts)
    transcriber.warm_up()
    synthesizer.warm_up()
    state = ServerState(
        settings,
        transcriber,
        make_chat(urls, settings, printer),
        synthesizer,
        token,
        origins,
        host=host,
        allowed_hosts=names,
    )
    announce(say, host, port, token, tls, allowed_hosts)
    logging.getLogger("uvicorn.error").addFilter(_one_line_for_bad_utf8)
    app = build_app(state)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        ws_max_size=WS_MAX_BYTES,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    )
    http = uvicorn.Server(config)
    # What uvicorn.run does, with the Wyoming server beside it in the same event loop. uvicorn
    # catches SIGTERM and Ctrl-C, shuts down (the app's shutdown closes Wyoming) and raises the
    # signal again once done: SIGTERM is then stop_on_sigterm's, Ctrl-C ends quietly here.
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve(http, app, state, wyoming, say))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise ConfigError(f"Cannot listen on {host}:{port} ({exc}). Pass another --port.") from None


async def _serve(
    http: uvicorn.Server,
    app: Starlette,
    state: ServerState,
    wyoming: WyomingOptions | None,
    say: Callable[[str], None],
) -> None:
    if wyoming is None:
        await http.serve()
        return
    from voxloop.server.wyoming_serve import beside

    async with beside(app, state, wyoming, say):
        await http.serve()


def _one_line_for_bad_utf8(record: logging.LogRecord) -> bool:
    """uvicorn logs a text frame that is not UTF-8 with a traceback (it closes the socket with
    1007, as it should): a client's bad frame is one warning line, not a server error."""
    if record.exc_info and isinstance(record.exc_info[1], UnicodeDecodeError):
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "A client sent a text frame that is not UTF-8; its socket was closed (1007)."
        record.args = ()
    return True


async def _check(chat: ChatModel) -> None:
    try:
        await chat.connect()
    finally:
        await chat.aclose()
