"""`voxloop chat` end to end, as a user runs it: real models, a real llama.cpp server process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cer, noise, wer
from voxloop.audio import save_wav
from voxloop.audio.decode import load_audio

pytestmark = pytest.mark.integration


def test_one_turn_transcript_reply_and_reply_audio(speech, voxloop, llm_server, tmp_path, transcriber):
    question = "What is the capital of France?"
    out = tmp_path / "out"
    run = voxloop(
        "chat",
        "--input",
        str(speech([question])),
        "--llm-url",
        llm_server,
        "--no-speak",
        "--json",
        "-o",
        str(out),
    )
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert len(done) == 1
    turn = done[0]
    assert wer(question, turn["user"]) <= 0.25
    assert turn["assistant"].strip()
    assert set(turn["timings"]) >= {
        "endpoint_wait_ms",
        "stt_ms",
        "llm_first_token_ms",
        "speech_end_to_first_audio_ms",
    }
    # The reply audio says the reply: hibari -> tiny.en round trip.
    reply_audio = load_audio(turn["reply_audio"])
    heard = transcriber.transcribe(reply_audio)
    assert cer(turn["assistant"], heard) <= 0.25, (turn["assistant"], heard)
    # The voice starts at once: no dead air before it (hibari pads ~0.25 s).
    assert np.flatnonzero(np.abs(reply_audio) > 0.01)[0] / 16000 < 0.05
    saved = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    # The log keeps the turn as --json printed it, with the time it was written.
    assert [{k: v for k, v in s.items() if k != "time"} for s in saved] == [turn]


def test_human_output_is_user_and_ai_lines(speech, voxloop, llm_server):
    run = voxloop("chat", "--input", str(speech(["Hello there!"])), "--llm-url", llm_server, "--no-speak")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].lower().startswith("user: hello there")
    assert lines[1].startswith("AI  : ") and len(lines[1]) > len("AI  : ")
    assert "stt" in lines[2] and "first audio" in lines[2]


def test_two_turns_second_request_carries_first_and_system_prompt(speech, voxloop, proxy):
    wav = speech(["My name is Alice.", "What is my name?"])
    run = voxloop(
        "chat",
        "--input",
        str(wav),
        "--llm-url",
        proxy.url,
        "--no-speak",
        "--json",
        "--system",
        "You are Pip.",
    )
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert len(done) == 2
    assert len(proxy.chats) == 2
    first, second = proxy.chats
    assert first["stream"] is True
    assert first["messages"] == [
        {"role": "system", "content": "You are Pip."},
        {"role": "user", "content": done[0]["user"]},
    ]
    assert second["messages"] == [
        {"role": "system", "content": "You are Pip."},
        {"role": "user", "content": done[0]["user"]},
        {"role": "assistant", "content": done[0]["assistant"]},
        {"role": "user", "content": done[1]["user"]},
    ]
    assert wer("what is my name", done[1]["user"]) <= 0.25
    # The model name was discovered from /v1/models, not guessed.
    assert first["model"] == "SmolLM2-135M-Instruct.Q8_0"


def test_short_yes_is_a_turn(speech, voxloop, llm_server):
    run = voxloop("chat", "--input", str(speech(["Yes."])), "--llm-url", llm_server, "--no-speak", "--json")
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert [d["user"].lower().strip(".!") for d in done] == ["yes"]


@pytest.mark.parametrize("kind", ["silence", "white-noise"])
def test_silence_and_noise_are_no_turn(kind, voxloop, proxy, tmp_path):
    wav = tmp_path / f"{kind}.wav"
    save_wav(wav, np.zeros(16000 * 3, np.float32) if kind == "silence" else noise(3.0, 0.1), 16000)
    run = voxloop("chat", "--input", str(wav), "--llm-url", proxy.url, "--no-speak", "--json")
    assert run.code == 0, run.err
    assert [e for e in run.events() if e["type"] == "turn_done"] == []
    assert proxy.chats == []
    assert "No speech was heard" in run.err


def test_embedded_default_server_starts_and_stops(speech, voxloop):
    """No --llm-url: voxloop starts llama.cpp for the command and stops it after."""
    run = voxloop("chat", "--input", str(speech(["Hello there!"])), "--no-speak", "--json")
    assert run.code == 0, run.err
    assert "Starting the embedded LLM" in run.err
    assert next(e["assistant"] for e in run.events() if e["type"] == "turn_done").strip()


def test_on_a_busy_box_the_embedded_server_moves_to_one_thread(speech, voxloop):
    """Another program keeps one of two cores busy: llama.cpp's two threads stall (a token every
    few seconds); voxloop restarts its server on one thread and the turns are answered."""
    import os
    import subprocess
    import sys

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two cores")
    two, busy_core = set(cpus[:2]), {cpus[1]}  # voxloop's whole world: two cores, one of them busy
    questions = ["What is the capital of France?", "How many legs does a spider have?"]
    wav = str(speech(questions))
    busy = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, busy_core)
    )
    os.sched_setaffinity(0, two)  # voxloop, and the llama.cpp server it starts, inherit it
    try:
        run = voxloop("chat", "--input", wav, "--no-speak", "--json", timeout=240)
    finally:
        os.sched_setaffinity(0, set(cpus))
        busy.kill()
    assert run.code == 0, run.err
    assert run.err.count("Restarting it on one thread") == 1, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert [wer(q, d["user"]) <= 0.25 for q, d in zip(questions, done, strict=True)] == [True, True]
    assert all(d["assistant"].strip() and not d["error"] for d in done)


def test_llm_start_status_stop_and_chat_reuses_it(speech, voxloop):
    from voxloop.llm.server import free_port

    port = str(free_port())
    start = voxloop("llm", "start", "--port", port)
    try:
        assert start.code == 0, start.err
        assert start.out.strip() == f"http://127.0.0.1:{port}/v1"
        status = voxloop("llm", "status")
        assert status.code == 0 and "ready" in status.out and port in status.out
        # It serves SmolLM2 re-packed as Q8_0, below voxloop's own priority (STT and TTS first).
        import os
        import re

        pid = int(re.search(r"pid (\d+)", status.out).group(1))
        assert os.getpriority(os.PRIO_PROCESS, pid) == 10
        assert "SmolLM2-135M-Instruct.Q8_0" in status.out
        run = voxloop("chat", "--input", str(speech(["Hello there!"])), "--no-speak")
        assert run.code == 0, run.err
        assert "Starting the embedded LLM" not in run.err
    finally:
        stop = voxloop("llm", "stop")
    assert stop.code == 0 and "Stopped" in stop.out
    after = voxloop("llm", "status")
    assert after.code == 3 and "Not running" in after.out


def test_say_writes_speech_that_transcribes_back(voxloop, tmp_path, transcriber):
    out = tmp_path / "hello.wav"
    run = voxloop("say", "The weather is sunny today.", "-o", str(out))
    assert run.code == 0, run.err
    assert wer("the weather is sunny today", transcriber.transcribe(load_audio(out))) <= 0.2


def test_doctor_reports_models_and_devices(voxloop, llm_server):
    run = voxloop("doctor", "--llm-url", llm_server)
    assert run.code == 0, run.err
    stt = next(line for line in run.out.splitlines() if "STT tiny.en" in line)
    assert stt.startswith("ok") and "(in use)" in stt and "tiny" not in run.err
    assert "ok      LLM server" in run.out
    assert "problem microphone" in run.out  # this machine has no sound card
    embedded = voxloop("doctor")  # the tests' preset is tiny: SmolLM2, checked and re-packed
    weights = next(line for line in embedded.out.splitlines() if "LLM tiny" in line)
    assert weights.startswith("ok") and "(in use)" in weights, embedded.out
    assert "Q4_1.gguf" in weights and "served as Q8_0" in weights


async def test_prefill_leaves_system_prompt_and_history_in_the_servers_cache(llm_server):
    """While the user talks, voxloop has the server read the conversation so far; the reply's
    request then finds it cached and reads only the new words."""
    import uuid

    import httpx

    from voxloop.conversation import Conversation
    from voxloop.llm.openai_http import OpenAIChat
    from voxloop.settings import Settings

    chat = OpenAIChat(llm_server, Settings().llm)
    await chat.connect()

    def conversation() -> Conversation:
        # A system prompt no earlier request used, so no server slot has it cached already.
        conv = Conversation(f"You are a helpful assistant for session {uuid.uuid4().hex}.")
        conv.add("What is the capital of France?", "The capital of France is Paris.")
        return conv

    async def cached_tokens(conv: Conversation) -> int:
        messages = conv.request("And of Italy?", chat.context_tokens, 8)
        body = {"model": chat.model, "messages": messages, "max_tokens": 1}
        async with httpx.AsyncClient(timeout=60) as client:
            response = await client.post(llm_server + "/chat/completions", json=body)
        return int(response.json()["timings"]["cache_n"])

    try:
        cold_n = await cached_tokens(conversation())
        warm = conversation()
        await chat.prefill(warm.request("", chat.context_tokens, 8))
        warm_n = await cached_tokens(warm)
    finally:
        await chat.aclose()
    assert warm_n >= cold_n + 25, (cold_n, warm_n)


async def test_the_words_heard_so_far_are_read_by_the_server_while_the_user_talks(
    llm_server, transcriber, synthesizer
):
    """A long question, spoken in real time: while it is still being said, the server is asked
    to read the words heard so far (a partial transcript) into its prompt cache, so the reply's
    request only has the last words to read; the reply is still to the whole question."""
    from voxloop.audio.sink import NullSink
    from voxloop.audio.sources import RealtimeSource
    from voxloop.audio.speech import spoken_turns
    from voxloop.llm.openai_http import OpenAIChat
    from voxloop.pipeline import Assistant
    from voxloop.printer import CollectingPrinter
    from voxloop.settings import Settings

    class Recording(OpenAIChat):
        def __init__(self, url: str, llm) -> None:  # type: ignore[no-untyped-def]
            super().__init__(url, llm)
            self.prefills: list[str] = []

        async def prefill(self, messages, tools=None):  # type: ignore[no-untyped-def]
            self.prefills.append(str(messages[-1]["content"]) if messages[-1]["role"] == "user" else "")
            await super().prefill(messages, tools)

    question = "I am planning a trip to Italy next spring with my family, what is the capital of Italy?"
    settings = Settings()
    chat = Recording(llm_server, settings.llm)
    samples = spoken_turns(synthesizer, [question])
    printer = CollectingPrinter()
    assistant = Assistant(settings, transcriber, chat, synthesizer, NullSink(), printer)
    try:
        (done,) = await assistant.run(RealtimeSource(samples))
    finally:
        await chat.aclose()
    said = [p for p in chat.prefills if p]
    assert said, chat.prefills  # the system prompt and history alone have an empty user turn
    heard = done.user.lower().split()
    for partial in said:  # each a beginning of what was finally heard (its last word maybe cut)
        words = partial.lower().split()[:-1]
        assert len(words) < len(heard) - 1 and wer(" ".join(heard[: len(words)]), " ".join(words)) <= 0.25
    assert wer(question, done.user) <= 0.25 and done.assistant


async def test_a_long_conversation_stays_in_the_servers_prompt_cache(llm_server):
    """Turn after turn of a conversation longer than the context, the server finds the history
    already read and reads only the newest exchange: the history is trimmed in one go now and
    then, not by one exchange every turn (which moved its beginning and emptied the cache)."""
    import uuid

    import httpx

    from voxloop.conversation import Conversation

    conv = Conversation(f"You are a helpful assistant for session {uuid.uuid4().hex}.")
    read: list[int] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(40):
            # A context of 700 tokens fills after ~12 exchanges: trimmed 3-4 times in 40 turns.
            messages = conv.request(f"Question number {i}: what is {i} plus {i}?", 700, 32)
            body = {"messages": messages, "max_tokens": 1, "temperature": 0}
            response = await client.post(llm_server + "/chat/completions", json=body)
            read.append(int(response.json()["timings"]["prompt_n"]))
            conv.add(f"Question number {i}: what is {i} plus {i}?", f"{i} plus {i} is {2 * i}. " * 3)
    # Only the turns right after a trim read the whole history again; the rest read one exchange.
    full = [n for n in read[1:] if n > 80]
    assert len(full) <= 6, read
    assert sorted(read[1:])[len(read) // 2] < 80, read
