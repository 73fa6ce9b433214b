"""Fast tests of single seams, with fakes where a real model would only slow them down."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Collection
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from kit import STALL, ScriptedChat, Voice, Words
from voxloop.audio.sink import NullSink
from voxloop.conversation import Conversation, Exchange, estimate_tokens
from voxloop.errors import (
    ConfigError,
    LLMContextOverflowError,
    LLMModelNotServedError,
    LLMProtocolError,
    LLMServerError,
    LLMUnavailableError,
)
from voxloop.events import SpeechEnded, SpeechStarted
from voxloop.llm import Message
from voxloop.llm.openai_http import OpenAIChat, normalize_url
from voxloop.pipeline import Assistant
from voxloop.printer import JsonPrinter
from voxloop.settings import LlmSettings, Settings, load_settings
from voxloop.tts.sentences import SentenceSplitter, speakable


# -- settings ---------------------------------------------------------------------------------
def test_settings_precedence_flags_over_env_over_file(tmp_path):
    cfg = tmp_path / "voxloop.toml"
    cfg.write_text(
        'system_prompt = "from file"\n[llm]\nmodel = "file-model"\nmax_tokens = 50\n[vad]\nend_silence_ms = 700\n'
    )
    env = {"VOXLOOP_LLM_MODEL": "env-model", "VOXLOOP_VAD_END_SILENCE_MS": "300", "VOXLOOP_TTS_SPEAK": "no"}
    s = load_settings({"llm": {"model": "flag-model"}}, config_file=str(cfg), environ=env)
    assert s.llm.model == "flag-model"
    assert s.vad.end_silence_ms == 300
    assert s.llm.max_tokens == 50
    assert s.system_prompt == "from file"
    assert s.tts.speak is False


def test_settings_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"vad\.engine"):
        load_settings({"vad": {"engine": "nope"}}, environ={})
    with pytest.raises(ConfigError, match=r"Unknown setting llm\.modle"):
        load_settings({"llm": {"modle": "x"}}, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=str(tmp_path / "missing.toml"), environ={})
    with pytest.raises(ConfigError, match=r"llm\.extra_body is not valid JSON"):
        load_settings(environ={"VOXLOOP_LLM_EXTRA_BODY": "{top_k: 20}"})
    with pytest.raises(ConfigError, match=r"llm\.extra_body must be a JSON object"):
        load_settings(environ={"VOXLOOP_LLM_EXTRA_BODY": "[1, 2]"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(config_file=str(bad), environ={})


def test_serve_port_is_the_pages_port_not_the_llms():
    from voxloop.cli import _overrides, _parser

    served = _parser().parse_args(["serve", "--port", "9000"])
    assert served.serve_port == 9000
    assert "llm" not in _overrides(served)
    started = _parser().parse_args(["llm", "start", "--port", "9001"])
    assert _overrides(started)["llm"]["port"] == 9001


def test_env_list_of_urls():
    s = load_settings(environ={"VOXLOOP_LLM_URLS": "http://a:1/v1, http://b:2/v1"})
    assert s.llm.urls == ("http://a:1/v1", "http://b:2/v1")


# -- sentence splitting -----------------------------------------------------------------------
def test_splitter_emits_sentences_as_they_complete():
    sp = SentenceSplitter()
    out = []
    for piece in ["Hello the", "re, my friend. Dr. Smith", " is 3.5 metres tall! And", " then"]:
        out += sp.feed(piece)
    # The first piece may end at a clause ("I'm sorry," is spoken while the rest is generated),
    # and the rest of that sentence is spoken as soon as it ends, however short; later pieces
    # are whole sentences of a speakable length.
    assert out == ["Hello there,", "my friend.", "Dr. Smith is 3.5 metres tall!"]
    assert _streamed("Paris is lovely in spring. It is. So nice.") == [
        "Paris is lovely",
        "in spring.",
        "It is. So nice.",
    ]
    assert sp.flush() == ["And then"]


def test_splitter_cuts_a_one_word_first_clause_only_after_an_opener():
    sp = SentenceSplitter()
    assert sp.feed("Paris, I think so. ") == ["Paris, I think so."]
    sp = SentenceSplitter()
    assert sp.feed("Sure, I can set that timer for you. ") == ["Sure,", "I can set that timer for you."]
    sp = SentenceSplitter()
    assert sp.feed("Oh, well, that is a good one. ") == ["Oh,", "well, that is a good one."]


def _streamed(text: str, step: int = 3) -> list[str]:
    sp = SentenceSplitter()
    out = []
    for i in range(0, len(text), step):
        out += sp.feed(text[i : i + step])
    return out + sp.flush()


def test_splitter_cuts_a_first_sentence_without_a_comma_where_a_phrase_starts():
    assert _streamed("I'm here to assist you with any question or problem. I can do more.") == [
        "I'm here to assist you",
        "with any question or problem.",
        "I can do more.",
    ]
    # Not before three words. Before a word that may still grow ("to" may become "today") it
    # cuts at once: that is a word boundary whatever the word becomes.
    assert _streamed("It is in the box.") == ["It is in the box."]
    assert _streamed("The tallest mountain in the world is Everest.") == [
        "The tallest mountain",
        "in the world is Everest.",
    ]
    sp = SentenceSplitter()
    assert sp.feed("I will call you to") == ["I will call you"]
    assert sp.feed("day at noon. ") == ["today at noon."]
    assert _streamed("Tomorrow is going to be a rainy day in the city of London.") == [
        "Tomorrow is going to be a rainy day",
        "in the city of London.",
    ]
    assert _streamed("The original capital of Australia was Sydney.") == [
        "The original capital",
        "of Australia was Sydney.",
    ]
    assert _streamed("The capital of Australia is Canberra.") == ["The capital of Australia", "is Canberra."]
    # Ten words and still no phrase start: cut there.
    assert _streamed("One two three four five six seven eight nine ten eleven twelve.") == [
        "One two three four five six seven eight nine ten",
        "eleven twelve.",
    ]
    # A comma or a sentence end first: those rules, as before.
    assert _streamed("The answer is Canberra, not Sydney.") == ["The answer is Canberra,", "not Sydney."]
    assert SentenceSplitter(first_phrase_words=0).feed("I'm here to assist you with any question ") == []


def test_pieces_of_a_reply_pause_as_a_speaker_would():
    from voxloop.tts.pacing import paced, pause_after

    assert pause_after("It is noon.") == pause_after('He said "yes!"') == 0.35
    assert pause_after("Sure,") == 0.15
    assert pause_after("I'm here to assist you") == 0.05
    padded = np.concatenate([np.zeros(4800), 0.3 * np.ones(2400), np.zeros(4800)]).astype(np.float32)
    out = paced(padded, 24000, "Sure,")
    assert len(out) == 240 + 2400 + 240 + int(0.15 * 24000)
    assert len(paced(np.zeros(4800, np.float32), 24000, "Hm.")) == 0


def test_speakable_strips_markdown():
    assert speakable("**Paris** is the `capital`.\n- one\n# Title") == "Paris is the capital . one Title"


# -- conversation -----------------------------------------------------------------------------
def test_history_trimmed_from_oldest_never_the_system_prompt():
    conv = Conversation("SYSTEM")
    for i in range(50):
        conv.add(f"question {i} " + "x" * 200, f"answer {i} " + "y" * 200)
    messages = conv.request("newest", context_tokens=1000, reply_tokens=100)
    assert messages[0] == {"role": "system", "content": "SYSTEM"}
    assert messages[-1] == {"role": "user", "content": "newest"}
    assert 2 < len(messages) < 100
    assert messages[-2]["content"].startswith("answer 49")
    assert messages[1]["role"] == "user"  # pairs stay whole
    assert all(not m["content"].startswith("question 0 ") for m in messages)


def test_a_trimmed_history_keeps_the_same_beginning_for_many_turns():
    """The server's prompt cache only reuses an unchanged beginning: trimming one exchange a
    turn would make it read the whole history again on every turn of a long conversation."""
    conv = Conversation("SYSTEM")
    starts: list[str] = []
    for i in range(120):
        messages = conv.request(f"question {i}", context_tokens=1000, reply_tokens=100)
        assert messages[0]["content"] == "SYSTEM" and messages[-1]["content"] == f"question {i}"
        assert estimate_tokens(messages) <= 900  # always room for the reply
        starts.append(messages[1]["content"] if len(messages) > 2 else "")
        conv.add(f"question {i} " + "x" * 60, f"answer {i} " + "y" * 60)
    # The history's first message changed only when it filled up: a few times in 120 turns.
    changes = sum(a != b for a, b in itertools.pairwise(starts))
    assert 3 <= changes <= 20, changes
    # After a trim, half the room is left, and the newest exchanges are kept.
    assert starts[-1].startswith("question 1")
    # A retry after the server overflowed keeps only the newest exchange, from then on.
    assert len(conv.request("again", 1000, 100, drop_oldest=len(conv.exchanges) - 1)) == 4
    assert len(conv.request("next", 1000, 100)) == 4


def test_a_prefill_during_the_reply_sends_the_history_the_next_turn_will_send():
    """The prefill made while a reply plays (its exchange not added yet) reads exactly the
    beginning that the next request sends, across the trims of a long conversation."""
    conv = Conversation("SYSTEM")
    for i in range(60):
        pending = Exchange(f"question {i} " + "x" * 60, f"answer {i} " + "y" * 60)
        prefill = conv.request("", context_tokens=1000, reply_tokens=100, pending=pending)
        assert prefill[-3:-1] == [
            {"role": "user", "content": pending.user},
            {"role": "assistant", "content": pending.assistant},
        ]
        conv.add(pending.user, pending.assistant)
        assert conv.request(f"next {i}", 1000, 100)[:-1] == prefill[:-1]


# -- the OpenAI client against canned HTTP answers ---------------------------------------------
def _sse(*pieces: str) -> bytes:
    lines = ["data: " + json.dumps({"choices": [{"delta": {"content": p}, "index": 0}]}) for p in pieces]
    return ("\n\n".join([*lines, "data: [DONE]"]) + "\n\n").encode()


def _client(handler) -> OpenAIChat:
    return OpenAIChat("127.0.0.1:9/v1/", LlmSettings(), transport=httpx.MockTransport(handler))


async def _collect(chat: OpenAIChat, messages: list[Message] | None = None) -> str:
    return "".join([p async for p in chat.stream(messages or [{"role": "user", "content": "hi"}])])


def test_normalize_url():
    assert normalize_url("localhost:8000") == "http://localhost:8000/v1"
    assert normalize_url("http://h:1/v1/chat/completions") == "http://h:1/v1"


async def test_streams_and_picks_first_model():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m1", "max_model_len": 4096}, {"id": "m2"}]})
        assert json.loads(request.content)["model"] == "m1"
        return httpx.Response(
            200, content=_sse("Hel", "lo", "!"), headers={"content-type": "text/event-stream"}
        )

    chat = _client(handler)
    await chat.connect()
    assert (chat.model, chat.context_tokens) == ("m1", 4096)
    assert await _collect(chat) == "Hello!"


async def test_extra_body_reaches_every_chat_request_without_replacing_voxloops_fields():
    bodies: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, content=_sse("Hi"), headers={"content-type": "text/event-stream"})

    extra = '{"chat_template_kwargs": {"enable_thinking": false}, "top_k": 20, "max_tokens": 9999}'
    settings = load_settings({"llm": {"extra_body": extra, "max_tokens": 40}}, environ={})
    chat = OpenAIChat("http://x/v1", settings.llm, transport=httpx.MockTransport(handler))
    await chat.prefill([{"role": "user", "content": "hi"}])
    assert await _collect(chat) == "Hi"
    for body in bodies:  # the prefill and the reply: the same template, so the cache matches
        assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["top_k"] == 20
    assert [b["max_tokens"] for b in bodies] == [1, 40]


async def test_unknown_model_lists_served_ones():
    chat = OpenAIChat(
        "http://x/v1",
        LlmSettings(model="mistral"),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": [{"id": "smol"}]})),
    )
    with pytest.raises(LLMModelNotServedError, match="It serves: smol"):
        await chat.connect()


@pytest.mark.parametrize(
    ("response", "error", "words"),
    [
        (
            httpx.Response(500, json={"error": {"message": "CUDA out of memory"}}),
            LLMServerError,
            "CUDA out of memory",
        ),
        (httpx.Response(503, text="busy"), LLMServerError, "overloaded"),
        (
            httpx.Response(200, text="<html>hi</html>", headers={"content-type": "text/html"}),
            LLMProtocolError,
            "OpenAI",
        ),
        (
            httpx.Response(400, json={"error": {"message": "maximum context length is 2048 tokens"}}),
            LLMContextOverflowError,
            "context",
        ),
        (
            httpx.Response(
                200, content=b"data: {not json\n\n", headers={"content-type": "text/event-stream"}
            ),
            LLMProtocolError,
            "not JSON",
        ),
        (
            httpx.Response(
                200,
                content=_sse("Hi")[: -len("data: [DONE]") - 2],
                headers={"content-type": "text/event-stream"},
            ),
            LLMUnavailableError,
            "lost mid-reply",
        ),
    ],
)
async def test_server_failures_become_clear_errors(response, error, words):
    chat = _client(lambda r: response)
    chat.model = "m"
    with pytest.raises(error, match=words):
        await _collect(chat)


async def test_nothing_listening_names_url_and_fix():
    chat = OpenAIChat("http://127.0.0.1:9/v1", LlmSettings())
    with pytest.raises(LLMUnavailableError, match=r"http://127.0.0.1:9/v1.*voxloop llm start"):
        await chat.connect()
    await chat.aclose()


# -- the pipeline with fakes at every seam ----------------------------------------------------
def numbered_chat(turns: int, fail: Collection[int] = ()) -> ScriptedChat:
    """Answers request N with "Reply N starts. And ends."; the server goes away midway through
    the requests numbered in ``fail``."""
    gone = LLMUnavailableError("server went away")
    replies = [[f"Reply {n} starts. ", gone if n in fail else "And ends."] for n in range(1, turns + 1)]
    return ScriptedChat(*replies, context_tokens=2048)


class ScriptedEndpointer:
    """One SpeechEnded per fed block, as if each block were a whole utterance."""

    hearing = False
    voiced_ms = float("inf")  # what it scripts is speech, long enough to interrupt

    def __init__(self) -> None:
        self.told: list[bool] = []  # what playback() was told, block by block

    def feed(self, block: np.ndarray) -> list[SpeechStarted | SpeechEnded]:
        return [SpeechEnded(audio=block, start_s=0.0, end_s=0.5, endpoint_at_s=1.0)]

    def reset(self) -> None:
        return None

    def playback(self, playing: bool) -> None:
        self.told.append(playing)


class BlocksSource:
    sample_rate = 16000
    live = False
    started_at = None

    def __init__(self, n: int) -> None:
        self.n = n

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        for _ in range(self.n):
            yield np.zeros(512, np.float32)

    def discard_pending(self) -> None:
        return None


async def test_failed_turn_is_reported_saved_and_the_next_one_works(tmp_path, capsys):
    settings = Settings(output=Settings().output.__class__(output_dir=str(tmp_path)))
    chat = numbered_chat(3, fail={2})
    assistant = Assistant(settings, Words("one", "two", "three"), chat, Voice(), NullSink(), JsonPrinter())
    turns = await assistant.run(BlocksSource(3), ScriptedEndpointer())
    assert [t.error is None for t in turns] == [True, False, True]
    assert turns[2].assistant == "Reply 3 starts. And ends."
    # What the failed turn had said stays in the history, marked as cut; the third request
    # carries both turns and alternates user/assistant.
    assert turns[1].assistant == "Reply 2 starts. …"
    roles = [m["role"] for m in chat.requests[2]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in chat.requests[2][1:5]] == [
        "one",
        "Reply 1 starts. And ends.",
        "two",
        "Reply 2 starts. …",
    ]
    lines = [json.loads(x) for x in (tmp_path / "conversation.jsonl").read_text().splitlines()]
    assert [x["user"] for x in lines] == ["one", "two", "three"]
    assert "server went away" in lines[1]["error"]
    assert lines[1]["assistant"] == "Reply 2 starts. …"
    assert (tmp_path / "turn-001.wav").is_file() and (tmp_path / "turn-002.wav").is_file()
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in out].count("turn_done") == 3
    assert any(e["type"] == "error" and "Turn 2" in e["message"] for e in out)
    # conversation.jsonl keeps each turn as --json printed it, with the time it was written.
    assert [{k: v for k, v in x.items() if k != "time"} for x in lines] == [
        e for e in out if e["type"] == "turn_done"
    ]


async def test_a_reply_with_nothing_to_say_is_asked_again():
    # The first reply has nothing speakable, as a tiny model's sometimes has not.
    chat = ScriptedChat(["**"], ["Hello there."], context_tokens=2048)
    assistant = Assistant(Settings(), Words("hi"), chat, Voice(), NullSink(), JsonPrinter())
    turns = await assistant.run(BlocksSource(1), ScriptedEndpointer())
    assert len(chat.requests) == 2
    assert turns[0].assistant == "Hello there."
    assert turns[0].reply_audio is None and "speech_end_to_first_audio_ms" in turns[0].timings


async def test_a_looping_reply_is_cut_and_the_stream_closed():
    chat = ScriptedChat(["I'm a voice. "] * 51, context_tokens=2048)  # a tiny model stuck in a loop
    assistant = Assistant(Settings(), Words("hi", "again"), chat, Voice(), NullSink(), JsonPrinter())
    turns = await assistant.run(BlocksSource(2), ScriptedEndpointer())
    assert turns[0].assistant == "I'm a voice."
    assert chat.closed_early
    assert chat.requests[1][-2] == {"role": "assistant", "content": "I'm a voice."}


async def test_the_endpointer_is_told_before_each_block_whether_voxloop_is_speaking():
    class SpeakingSink(NullSink):
        def busy(self) -> bool:
            return True

    for sink, speaking in ((NullSink(), False), (SpeakingSink(), True)):
        endpointer = ScriptedEndpointer()
        chat = numbered_chat(2)
        assistant = Assistant(Settings(), Words("hi", "again"), chat, Voice(), sink, JsonPrinter())
        await assistant.run(BlocksSource(2), endpointer)
        assert endpointer.told == [speaking, speaking]


def test_loop_guard_spots_word_runs_not_normal_speech():
    from voxloop.tts.sentences import LoopGuard

    guard = LoopGuard()
    assert guard.stuck("I'm sorry, sorry, sorry, sorry")
    assert not guard.stuck("It is very, very good to see you")
    assert guard.stuck("YAYYYYYYYYYYYY")
    assert not guard.stuck("Zzzz, that was a good nap. Aaah!")
    assert not guard.repeats("A spider has eight legs.")
    assert guard.repeats("a spider has eight legs!")


def test_sounds_finished():
    from voxloop.reply import sounds_finished

    assert sounds_finished("What is the capital of France?")
    assert sounds_finished("My name is Alice.")
    assert sounds_finished("No")
    assert not sounds_finished("I would like to.")
    assert not sounds_finished("Tell me about the weather and")
    assert not sounds_finished("Well...")
    assert not sounds_finished("")


def test_embedded_model_is_repacked_as_q8_once_or_falls_back_to_the_packaged_file(tmp_path, monkeypatch):
    from voxloop.llm import server
    from voxloop.settings import LlmSettings

    tiny = LlmSettings(preset="tiny")
    monkeypatch.delenv("VOXLOOP_MODELS", raising=False)
    monkeypatch.setenv("VOXLOOP_HOME", str(tmp_path / "home"))
    fast = server.embedded_gguf(tiny)
    assert fast.name == "SmolLM2-135M-Instruct.Q8_0.gguf" and fast.parent == tmp_path / "home" / "models"
    assert fast.read_bytes()[:4] == b"GGUF" and fast.stat().st_size > server.smollm2_gguf().stat().st_size
    assert server.embedded_gguf(tiny) == fast  # made once, then reused
    # Without llama.cpp's quantize tool, the server runs the packaged Q4_1 file.
    monkeypatch.setenv("VOXLOOP_HOME", str(tmp_path / "other"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server, "llama_server_binary", lambda: tmp_path / "bin" / "llama-server")
    assert server.embedded_gguf(tiny) == server.smollm2_gguf()
    # No half-written file left (only the stamp that says the packaged file was checked).
    assert [f.name for f in (tmp_path / "other" / "models").iterdir()] == [
        "SmolLM2-135M-Instruct.Q4_1.gguf.verified"
    ]


def test_a_decoder_that_starts_the_utterance_over_is_cut_at_the_restart():
    from voxloop.stt.whisper import cut_restart

    what, time, is_, it, q = 100, 101, 102, 103, 104
    assert cut_restart([what, time, is_, it, q, what, time, is_, it]) == [what, time, is_, it, q]
    assert cut_restart([what, time, is_, it, q, what, time]) == [what, time, is_, it, q]
    assert cut_restart([what, q, what, q, what, q]) == [what, q]
    # Not a restart: one token again, or the same words later in a different order.
    assert cut_restart([what, time, q, what]) == [what, time, q, what]
    assert cut_restart([what, time, is_, time, what, it]) == [what, time, is_, time, what, it]
    assert cut_restart([]) == []


def test_short_utterances_get_the_short_encoder_window():
    from voxloop.settings import SttSettings
    from voxloop.stt.whisper import encoder_window

    default = SttSettings()
    assert encoder_window(0.6, default) == 6.0
    assert encoder_window(5.5, default) == 6.0
    assert encoder_window(5.6, default) == 8.0
    assert encoder_window(7.6, default) == 10.0
    assert encoder_window(9.6, default) is None  # Whisper's own 30 s path
    assert encoder_window(2.0, SttSettings(short_window_s=0)) == 8.0
    assert encoder_window(2.0, SttSettings(short_window_s=0, mid_window_s=0)) == 10.0
    assert encoder_window(2.0, SttSettings(short_window_s=0, mid_window_s=0, window_s=30)) is None


@pytest.mark.parametrize("numpy_first", [False, True])
def test_numpy_runs_one_blas_thread_in_voxloop_unless_the_user_says_otherwise(numpy_first):
    """numpy's OpenBLAS threads spin after every product and take the cores from the stages."""
    import os
    import subprocess
    import sys

    imports = "import numpy, voxloop" if numpy_first else "import voxloop, numpy"
    code = f"{imports}; from threadpoolctl import threadpool_info; print([p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'])"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1]"
    env["OPENBLAS_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[2]"


def test_the_embedded_server_runs_one_thread_under_serve_unless_told(tmp_path, monkeypatch):
    """Two llama.cpp threads starve when STT and TTS keep a core busy, as under `serve`."""
    from voxloop.app import serving
    from voxloop.llm import server

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(server, "llama_server_binary", lambda: tmp_path / "llama-server")

    def threads(settings: Settings) -> str:
        cmd = server.llamacpp_launch(settings.llm, 8765, str(gguf)).cmd
        return cmd[cmd.index("--threads") + 1]

    one = Settings()
    assert threads(one) == "2" and threads(serving(one)) == "1"
    chosen = load_settings(environ={"VOXLOOP_LLM_THREADS": "2"})
    assert threads(serving(chosen)) == "2"


class RestartableServer:
    def __init__(self, threads: int = 2, private: bool = True) -> None:
        self.settings = LlmSettings(threads=threads)
        self.proc = object() if private else None
        self.url = "http://127.0.0.1:1/v1"
        self.restarts: list[int] = []

    @property
    def threads(self) -> int:
        return self.settings.threads

    def restart(self, threads: int) -> None:
        self.restarts.append(threads)
        self.settings = LlmSettings(threads=threads)
        self.url = "http://127.0.0.1:2/v1"


async def _guarded(chat: ScriptedChat, server: RestartableServer) -> tuple[str, list[str]]:
    from voxloop.llm.stall import StallGuard

    said: list[str] = []
    guard = StallGuard(chat, server, said.append, first_piece_s=0.2, next_piece_s=0.1)  # type: ignore[arg-type]
    ask: list[Message] = [{"role": "user", "content": "hi"}]
    return "".join([p async for p in guard.stream(ask)]), said


async def test_a_stalled_embedded_server_is_restarted_on_one_thread_and_asked_again():
    chat = ScriptedChat([STALL], ["Hello", " there."])
    server = RestartableServer()
    reply, said = await _guarded(chat, server)
    assert reply == "Hello there." and server.restarts == [1]
    assert chat.requests[1] == chat.requests[0]  # nothing was said: the same request again
    assert chat.url == "http://127.0.0.1:2/v1"  # wherever the restarted server listens
    assert len(said) == 1 and "no token for 0.2 s" in said[0] and "one thread" in said[0]


async def test_a_reply_that_stalls_midway_goes_on_from_what_was_said():
    chat = ScriptedChat(["Once", " upon", STALL], [" a time."])
    server = RestartableServer()
    reply, said = await _guarded(chat, server)
    assert reply == "Once upon a time." and server.restarts == [1]
    assert chat.requests[1][-1] == {"role": "assistant", "content": "Once upon"}
    assert "no token for 0.1 s" in said[0]


@pytest.mark.parametrize("server", [RestartableServer(threads=1), RestartableServer(private=False)])
async def test_one_thread_or_a_shared_server_is_never_restarted(server):
    slow = ScriptedChat(["Slow."], delay_s=0.4)  # slower than the limits, but it comes
    reply, said = await _guarded(slow, server)
    assert reply == "Slow." and server.restarts == [] and said == []


def test_closing_interim_transcripts_does_not_fail_when_the_child_is_slow_to_die():
    """On a busy box a process that runs only on idle CPU may not even die within the wait."""
    import subprocess

    from voxloop.stt.interim import InterimTranscriber

    class Stuck:
        pid = 0
        killed = False

        def poll(self) -> None:
            return None

        def wait(self, timeout: float | None = None) -> int:
            raise subprocess.TimeoutExpired("interim", timeout or 0)

        def kill(self) -> None:
            self.killed = True

    interim = object.__new__(InterimTranscriber)
    interim.executor = ThreadPoolExecutor(1)
    interim._frozen = False
    interim._conn = type("Conn", (), {"close": lambda self: None})()
    interim._proc = stuck = Stuck()  # type: ignore[assignment]
    interim.close()
    assert stuck.killed


class ScriptedVad:
    """A VAD seam that plays back a list of probabilities and notes when it is reset."""

    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)
        self._i = -1  # the step last scored
        self.at: list[int] = []  # the step after which each reset came

    def probability(self, step: np.ndarray) -> float:
        self._i += 1
        return self.probs[self._i]

    def reset(self) -> None:
        self.at.append(self._i)


def test_silero_memory_is_cleared_only_while_voxloop_speaks_and_only_between_turns():
    from voxloop.settings import VadSettings
    from voxloop.vad.endpointer import STEP, SileroEndpointer

    quiet, voiced = [0.02] * 40, [0.9] * 20
    script = quiet + voiced + quiet  # 40 quiet steps, a 640 ms utterance, 40 quiet steps
    block = np.zeros(STEP, np.float32)

    def run(playing: bool, refresh_ms: int = 512) -> ScriptedVad:
        vad = ScriptedVad(script)
        endpointer = SileroEndpointer(VadSettings(refresh_ms=refresh_ms), vad=vad)  # type: ignore[arg-type]
        vad.at.clear()  # the one made by the constructor
        endpointer.playback(playing)
        for _ in script:
            endpointer.feed(block)
        return vad

    assert run(playing=False).at == []  # ordinary turns: Silero keeps its memory
    assert run(playing=True, refresh_ms=0).at == []
    speaking = run(playing=True)
    # every 16 quiet steps (512 ms) before the user talks, none while the turn is open (it ends
    # after 600 ms of silence, 19 steps), then again once it is over
    assert speaking.at[:2] == [15, 31]
    assert all(not 40 <= i < 60 + 19 for i in speaking.at), speaking.at
    assert len(speaking.at) == 3


# -- the embedded server's process ---------------------------------------------------------------
def test_a_state_file_whose_pid_now_belongs_to_another_program_is_not_stopped(tmp_path, monkeypatch):
    """`voxloop llm stop` kills only the server it started: after a reboot its pid may belong to
    any program, which the recorded start time tells apart."""
    import dataclasses
    import subprocess
    import sys

    from voxloop.llm import server

    monkeypatch.setenv("VOXLOOP_HOME", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        info = server.ServerInfo("llamacpp", other.pid, "http://127.0.0.1:9/v1", "m", 9, "log", "", 0.0)
        stranger = dataclasses.replace(info, started=server._start_time(other.pid) - 3600)
        server.save_state(stranger)
        assert server.read_state() is None and not server.state_file().exists()
        assert server.stop_server() is None and other.poll() is None  # left alone
        own = dataclasses.replace(info, started=server._start_time(other.pid))
        server.save_state(own)
        assert server.read_state() == own
        assert server.stop_server() == own
        assert other.wait(timeout=10) is not None and not server.pid_alive(other.pid)
    finally:
        other.kill()


def test_the_floor_holds_judges_and_releases_a_reply_once_and_refuses_other_moves():
    from voxloop.floor import Floor, FloorState

    class Sink:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def pause(self) -> None:
            self.calls.append("pause")

        def resume(self) -> None:
            self.calls.append("resume")

    sink = Sink()
    floor = Floor(sink)  # type: ignore[arg-type]
    floor.hold()
    floor.hold()  # a second voiced step: still one pause
    floor.release("a click")
    assert sink.calls == ["pause", "resume"] and floor.state is FloorState.OPEN
    floor.hold()
    floor.judge(2.5)  # the voice became a turn: still the same pause
    assert floor.judging and sink.calls == ["pause", "resume", "pause"]
    assert floor.cut() == 2.5 and floor.state is FloorState.OPEN  # the flush ends the pause
    assert sink.calls == ["pause", "resume", "pause"]
    floor.judge(4.0)
    floor.release("a backchannel")
    assert sink.calls[-2:] == ["pause", "resume"]
    floor.judge(5.0)
    with pytest.raises(RuntimeError, match="judging to held"):
        floor._to(FloorState.HELD)


async def test_a_turn_that_fails_on_a_bug_is_reported_and_the_next_one_works(capsys):
    """Not an LLM error: an exception nobody foresaw (a library's, on one reply). The turn says
    so in one line and keeps what was said; the conversation goes on."""
    chat = ScriptedChat(["Reply one starts. ", RuntimeError("a library tripped")], ["Reply two."])
    assistant = Assistant(Settings(), Words("one", "two"), chat, Voice(), NullSink(), JsonPrinter())
    turns = await assistant.run(BlocksSource(2), ScriptedEndpointer())
    assert [t.user for t in turns] == ["one", "two"]
    assert turns[0].error is not None and "a library tripped" in turns[0].error
    assert turns[0].assistant == "Reply one starts. …"
    assert turns[1].assistant == "Reply two." and turns[1].error is None
    assert [m["role"] for m in chat.requests[1]] == ["system", "user", "assistant", "user"]
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    errors = [e["message"] for e in out if e["type"] == "error"]
    assert len(errors) == 1 and "Turn 1" in errors[0] and "a library tripped" in errors[0]


async def test_a_transcriber_that_fails_on_one_utterance_ends_only_that_turn(capsys):
    class Flaky(Words):
        def transcribe(self, audio, stop=None):
            text = super().transcribe(audio, stop)
            if text == "boom":
                raise ValueError("cannot decode this chunk")
            return text

    chat = ScriptedChat(["Reply."])
    assistant = Assistant(Settings(), Flaky("boom", "two"), chat, Voice(), NullSink(), JsonPrinter())
    turns = await assistant.run(BlocksSource(2), ScriptedEndpointer())
    assert [t.user for t in turns] == ["two"] and turns[0].assistant == "Reply."
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    errors = [e["message"] for e in out if e["type"] == "error"]
    assert len(errors) == 1 and "cannot decode this chunk" in errors[0]


def test_the_recorder_keeps_what_was_heard_and_writes_the_turn_everywhere_once(tmp_path):
    import json

    import numpy as np

    from voxloop.conversation import Conversation
    from voxloop.events import ErrorEvent, SpeechEnded, TurnDone
    from voxloop.recorder import TurnRecorder
    from voxloop.reply import ReplyResult

    shown: list[object] = []
    conversation = Conversation("")
    recorder = TurnRecorder(conversation, tmp_path, 22050, shown.append)
    speech = SpeechEnded(np.zeros(160, np.float32), 1.0, 2.0, 2.25)
    whole = ReplyResult(user="Hi?", sentences=["Hello.", "How are you?"], audio=[np.ones(2205, np.float32)])
    whole.first_sentence_ms = 300.0
    first = recorder.record(whole, speech, started_audio_s=2.05, first_audio_at_s=2.6, interrupted=False)
    cut = ReplyResult(user="Go on.", sentences=[])
    second = recorder.record(cut, speech, started_audio_s=2.25, first_audio_at_s=None, interrupted=True)
    failed = ReplyResult(user="And then?", sentences=["Then it"], error="the server went away")
    third = recorder.record(failed, speech, started_audio_s=2.25, first_audio_at_s=2.5, interrupted=False)
    assert [t.index for t in (first, second, third)] == [1, 2, 3] and recorder.done == [first, second, third]
    assert first.timings["endpoint_wait_ms"] == pytest.approx(250)
    assert first.timings["head_start_ms"] == pytest.approx(200)
    assert first.timings["speech_end_to_first_audio_ms"] == pytest.approx(600)
    assert first.timings["first_sentence_ms"] == 300.0 and "interrupted" not in first.timings
    assert second.assistant == "…" and second.interrupted and second.timings["interrupted"] == 1.0
    assert third.assistant == "Then it …" and third.error == "the server went away"
    # The history, the log and the events say the same.
    assert [(e.user, e.assistant) for e in conversation.exchanges] == [
        ("Hi?", "Hello. How are you?"),
        ("Go on.", "…"),
        ("And then?", "Then it …"),
    ]
    lines = [json.loads(x) for x in (tmp_path / "conversation.jsonl").read_text().splitlines()]
    assert [x["assistant"] for x in lines] == ["Hello. How are you?", "…", "Then it …"]
    assert first.reply_audio == str(tmp_path / "turn-001.wav") and (tmp_path / "turn-001.wav").exists()
    assert [type(e) for e in shown] == [TurnDone, TurnDone, ErrorEvent, TurnDone]
    assert "Turn 3 got no complete reply" in shown[2].message  # type: ignore[attr-defined]


def test_a_phrase_paused_in_is_joined_whole_again():
    from voxloop.reply import joined

    assert joined("I'd like to order.", "A large pizza.") == "I'd like to order, a large pizza."
    assert joined("My number is 012.", "3456.") == "My number is 012, 3456."
    assert joined("Can you tell me?", "What time it is.") == "Can you tell me? what time it is."
    assert joined("Remind me to call", "NASA tomorrow.") == "Remind me to call NASA tomorrow."
    assert joined("So", "I think.") == "So I think."  # "I" stays a capital
