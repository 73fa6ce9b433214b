"""Bad input: one line on stderr that says what happened and what to do, a non-zero exit, no
traceback, and the conversation so far kept."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import Run

pytestmark = pytest.mark.integration


def one_clear_line(run: Run, code: int, *words: str) -> str:
    assert run.code == code, (run.code, run.out, run.err)
    assert "Traceback" not in run.err and "Traceback" not in run.out
    lines = [line for line in run.err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, run.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("missing.wav", None, ["does not exist", "missing.wav"]),
        ("empty.wav", b"", ["empty"]),
        (
            "corrupt.wav",
            b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00garbage-garbage-garbage",
            ["Cannot decode", "WAV"],
        ),
        ("notes.wav", b"These are my meeting notes, not audio.\n" * 20, ["Cannot decode", "WAV"]),
    ],
)
def test_bad_audio_files(name, content, words, voxloop, tmp_path):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    for command in (
        ["chat", "--input", str(path), "--llm-url", "http://127.0.0.1:9/v1"],
        ["transcribe", str(path)],
    ):
        one_clear_line(voxloop(*command), 3, *words)


def test_debug_shows_the_traceback(voxloop, tmp_path):
    run = voxloop("transcribe", str(tmp_path / "missing.wav"), "--debug")
    assert run.code != 0 and "Traceback" in run.err


def test_nothing_listening_at_llm_url(speech, voxloop):
    line = one_clear_line(
        voxloop(
            "chat",
            "--input",
            str(speech(["Hello there!"])),
            "--llm-url",
            "http://127.0.0.1:9/v1",
            "--no-speak",
        ),
        6,
    )
    assert "http://127.0.0.1:9/v1" in line and "voxloop llm start" in line


def test_unknown_model_lists_what_the_server_has(speech, voxloop, llm_server):
    run = voxloop(
        "chat",
        "--input",
        str(speech(["Hello there!"])),
        "--llm-url",
        llm_server,
        "--llm-model",
        "mistral-7b",
        "--no-speak",
    )
    one_clear_line(run, 6, "mistral-7b", "It serves: SmolLM2-135M-Instruct.Q8_0")


def test_server_answering_non_json(speech, voxloop, proxy):
    proxy.models_garbage = True
    run = voxloop("chat", "--input", str(speech(["Hello there!"])), "--llm-url", proxy.url, "--no-speak")
    one_clear_line(run, 6, "JSON", proxy.url)


@pytest.mark.parametrize(
    ("mode", "words"), [("refuse", ["HTTP 503", "overloaded"]), ("garbage", ["OpenAI"]), ("drop", ["Turn 2"])]
)
def test_llm_failing_mid_conversation_keeps_earlier_turns_and_recovers(
    mode, words, speech, voxloop, proxy, tmp_path
):
    wav = speech(["Hello there!", "What is the capital of France?", "Tell me a joke about cats."])
    proxy.plan = ["ok", mode, "ok"]
    out = tmp_path / "out"
    run = voxloop(
        "chat", "--input", str(wav), "--llm-url", proxy.url, "--no-speak", "-o", str(out),
        extra_env={"VOXLOOP_LLM_BUSY_WAIT_S": "0"},  # fail at once on a busy server here
    )  # fmt: skip
    one_clear_line(run, 6, "Turn 2", *words)
    saved = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    assert len(saved) == 3
    assert saved[0]["error"] is None and saved[0]["assistant"]
    assert saved[1]["error"] and saved[1]["assistant"] is None
    assert saved[2]["error"] is None and saved[2]["assistant"]
    # The third request carries turn one but not the failed turn two.
    third = proxy.chats[2]["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user"]
    assert third[1]["content"] == saved[0]["user"]


def test_missing_stt_model_path(speech, voxloop, tmp_path):
    run = voxloop("transcribe", str(speech(["Hello there!"])), "--stt-model", str(tmp_path / "no-such-model"))
    one_clear_line(run, 5, "STT model", "no-such-model")


def test_no_microphone(voxloop):
    run = voxloop("chat", "--llm-url", "http://127.0.0.1:9/v1")
    one_clear_line(run, 4, "--input")


def test_bad_setting_value(voxloop, tmp_path):
    run = voxloop("chat", "--input", "x.wav", extra_env={"VOXLOOP_VAD_END_SILENCE_MS": "soon"})
    one_clear_line(run, 2, "vad.end_silence_ms", "soon")
    run = voxloop("chat", "--input", "x.wav", extra_env={"VOXLOOP_LLM_EXTRA_BODY": "top_k=20"})
    one_clear_line(run, 2, "llm.extra_body", "JSON")


def test_a_typo_in_the_tool_settings_is_said_before_any_model_loads(voxloop, tmp_path):
    """Before the embedded LLM server starts (a minute for the base preset on 2 cores)."""
    hello = str(Path(__file__).resolve().parents[1] / "samples" / "hello.wav")
    for command in (("chat", "--input", hello), ("serve", "--port", "0")):
        started = time.monotonic()
        run = voxloop(*command, extra_env={"VOXLOOP_TOOLS_ALLOW": "calculater"})
        one_clear_line(run, 2, "tools.allow", "calculater", "calculate")
        assert time.monotonic() - started < 10, command
    run = voxloop("chat", "--input", hello, extra_env={"VOXLOOP_TOOLS_PLUGINS": "lawn"})
    one_clear_line(run, 2, "lawn")
    assert "Starting llamacpp" not in run.err


def test_stt_model_name_is_never_downloaded_by_default(speech, voxloop):
    run = voxloop("transcribe", str(speech(["Hello there!"])), "--stt-model", "medium.en")
    one_clear_line(run, 5, "medium.en", "--stt-allow-download")


def test_a_busy_server_is_waited_for_with_a_message(speech, voxloop, proxy):
    proxy.plan = ["refuse", "refuse", "ok"]
    run = voxloop(
        "chat", "--input", str(speech(["Hello there!"])), "--llm-url", proxy.url, "--no-speak", "--json"
    )
    assert run.code == 0, run.err
    assert "is busy (HTTP 503" in run.err and "waiting" in run.err
    assert [e["type"] for e in run.events()].count("turn_done") == 1
    assert len(proxy.chats) == 3


def test_failover_to_the_next_server_keeps_the_conversation(speech, voxloop, proxy_factory, llm_server):
    first, second = proxy_factory(llm_server), proxy_factory(llm_server)
    first.plan = ["ok", "garbage"]  # the first server breaks on turn two, before any reply
    wav = speech(["My name is Alice.", "What is the capital of France?", "What is my name?"])
    run = voxloop(
        "chat", "--input", str(wav), "--llm-url", "http://127.0.0.1:9/v1", "--llm-url", first.url,
        "--llm-url", second.url, "--no-speak", "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert len(done) == 3 and all(d["assistant"] for d in done)
    assert len(first.chats) == 2 and len(second.chats) == 2
    last = second.chats[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[1]["content"] == done[0]["user"] and last[3]["content"] == done[1]["user"]


def test_no_server_usable_names_them_all(speech, voxloop):
    run = voxloop(
        "chat", "--input", str(speech(["Hello there!"])), "--no-speak",
        "--llm-url", "http://127.0.0.1:9/v1", "--llm-url", "http://127.0.0.1:10/v1",
    )  # fmt: skip
    one_clear_line(run, 6, "127.0.0.1:9", "127.0.0.1:10")
