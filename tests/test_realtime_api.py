"""`voxloop serve`'s OpenAI Realtime API at /v1/realtime (issue 17), with the real models and a real
LLM server: a spoken question streamed as 24 kHz PCM16 through the official openai client is heard
(server VAD), transcribed and answered in speech whose words match its transcript; typed and
committed turns answered on response.create in the beta names; a response in text only (the
session's or one response's output modalities) streams text deltas and no audio; response.cancel
stops a reply at once; a bad event is an error event and the session goes on; a wrong key is
refused."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import websockets

from conftest import _norm, wer
from test_serve import TOKEN, start_serve
from voxloop.audio.decode import resample
from voxloop.audio.speech import spoken_turns

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
CHUNK_S = 0.04  # a client's microphone chunks: 40 ms


@pytest.fixture(scope="module")
def server(llm_server, tmp_path_factory) -> Iterator[str]:
    proc, base = start_serve(llm_server, str(tmp_path_factory.mktemp("realtime-home")))
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def heard(transcriber: Any, deltas: list[str]) -> str:
    """What Whisper hears in the reply's audio deltas (24 kHz PCM16, base64)."""
    pcm = b"".join(base64.b64decode(d) for d in deltas)
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    return str(transcriber.transcribe(resample(audio, 24000, 16000)))


def shared_words(said: str, heard_text: str) -> float:
    words = _norm(said).split()
    got = set(_norm(heard_text).split())
    return sum(w in got for w in words) / max(1, len(words))


async def test_a_spoken_question_through_the_openai_client(server, synthesizer, transcriber):
    question = spoken_turns(synthesizer, [QUESTION], rate=24000, lead_s=0.3)
    client = openai.AsyncOpenAI(base_url=f"http://{server}/v1", api_key=TOKEN, max_retries=0)
    events: list[tuple[float, Any]] = []
    spoken_end = 0.0
    async with client.realtime.connect(model="gpt-realtime") as conn:
        created = await asyncio.wait_for(conn.recv(), 10)
        assert created.type == "session.created"
        assert created.session.audio.input.format.rate == 24000
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "You are a helpful assistant. Answer in one short sentence.",
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad"}},
                    "output": {"voice": "marin"},
                },
            }
        )
        updated = await asyncio.wait_for(conn.recv(), 10)
        assert updated.type == "session.updated" and updated.session.audio.output.voice == "marin"

        async def microphone() -> None:
            nonlocal spoken_end
            step = int(24000 * CHUNK_S)
            silence = np.zeros(step, np.float32)
            t0 = time.perf_counter()
            chunks = [question[i : i + step] for i in range(0, len(question), step)] + [silence] * 150
            for n, chunk in enumerate(chunks):
                if n == len(question) // step:
                    spoken_end = time.perf_counter()
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm16(chunk)).decode())
                await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK_S - time.perf_counter()))

        mic = asyncio.create_task(microphone())
        try:
            while True:
                event = await asyncio.wait_for(conn.recv(), 60)
                events.append((time.perf_counter(), event))
                if event.type == "response.done":
                    break
        finally:
            mic.cancel()
    kinds = [e.type for _, e in events]
    assert "error" not in kinds, [e for _, e in events if e.type == "error"]
    order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",  # the words before their answer
        "response.created",
        "response.output_item.added",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.done",
    ]
    assert all(k in kinds for k in order), kinds
    firsts = [kinds.index(k) for k in order]
    assert firsts == sorted(firsts), kinds
    user = next(e for _, e in events if e.type == "conversation.item.input_audio_transcription.completed")
    stopped = next(e for _, e in events if e.type == "input_audio_buffer.speech_stopped")
    assert user.item_id == stopped.item_id and wer(QUESTION, user.transcript) <= 0.25
    said = "".join(e.delta for _, e in events if e.type == "response.output_audio_transcript.delta")
    done = events[-1][1]
    assert done.response.status == "completed" and said.strip()
    assert done.response.output[0].content[0].transcript == said
    audio = [e.delta for _, e in events if e.type == "response.output_audio.delta"]
    assert len(base64.b64decode("".join(audio[:1]))) > 0
    reply_heard = heard(transcriber, audio)
    assert shared_words(said, reply_heard) >= 0.5, (said, reply_heard)
    first_audio = next(t for t, e in events if e.type == "response.output_audio.delta")
    print(f"\nend of speech -> first response.output_audio.delta: {(first_audio - spoken_end) * 1000:.0f} ms")
    assert first_audio - spoken_end < 5.0


async def recv(ws: Any, timeout: float = 60) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def until(ws: Any, kind: str, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    while True:
        event = await recv(ws)
        if seen is not None:
            seen.append(event)
        if event["type"] == kind:
            return event


async def test_typed_and_committed_turns_in_beta_names_and_a_cancel(server, synthesizer):
    url = f"ws://{server}/v1/realtime?model=gpt-4o-realtime-preview"
    headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        created = await recv(ws, 10)
        assert created["type"] == "session.created" and created["session"]["input_audio_format"] == "pcm16"
        await ws.send(
            json.dumps({"type": "session.update", "session": {"turn_detection": None, "voice": "alloy"}})
        )
        updated = await recv(ws, 10)
        assert updated["session"]["turn_detection"] is None and updated["session"]["voice"] == "alloy"

        # A committed buffer: transcribed at once, answered on response.create.
        question = pcm16(spoken_turns(synthesizer, [QUESTION], rate=24000))
        for i in range(0, len(question), 48000):
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(question[i : i + 48000]).decode()}))  # fmt: skip
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c1"}))
        committed = await until(ws, "input_audio_buffer.committed")
        done = await until(ws, "conversation.item.input_audio_transcription.completed")
        assert done["item_id"] == committed["item_id"] and wer(QUESTION, done["transcript"]) <= 0.25
        await ws.send(json.dumps({"type": "response.create"}))
        seen: list[dict[str, Any]] = []
        reply = await until(ws, "response.done", seen)
        kinds = {e["type"] for e in seen}
        assert {"response.created", "response.audio.delta", "response.audio_transcript.delta"} <= kinds
        assert not kinds & {"response.output_audio.delta", "conversation.item.added"}  # beta names only
        assert reply["response"]["status"] == "completed"

        # A typed message, cancelled once its audio starts: nothing after response.done.
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story about a dragon."}]}  # fmt: skip
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        created_item = await until(ws, "conversation.item.created")
        assert created_item["item"]["content"][0]["text"].startswith("Tell me a long story")
        await ws.send(json.dumps({"type": "response.create"}))
        await until(ws, "response.audio.delta")
        cancel_sent = time.perf_counter()
        await ws.send(json.dumps({"type": "response.cancel"}))
        seen = []
        cancelled = await until(ws, "response.done", seen)
        cancel_ms = (time.perf_counter() - cancel_sent) * 1000
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "client_cancelled"
        after: list[dict[str, Any]] = []
        with pytest.raises(asyncio.TimeoutError):
            while True:
                after.append(await recv(ws, 1.5))
        assert not [e for e in after if e["type"].startswith("response.")], after
        print(f"\nresponse.cancel -> response.done: {cancel_ms:.0f} ms")

        # The conversation goes on after the cancel.
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create"}))
        assert (await until(ws, "response.done"))["response"]["status"] == "completed"


def first_audio_count(base: str) -> float:
    """How many turns the server made reply audio for (/metrics, a histogram observed per turn
    that had audio)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{base}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "voxloop_stage_seconds_count" and sample.labels == {
                "stage": "speech_end_to_first_audio"
            }:
                return sample.value
    return 0.0


async def test_a_text_only_session_answers_in_text_through_the_openai_client(server):
    client = openai.AsyncOpenAI(base_url=f"http://{server}/v1", api_key=TOKEN, max_retries=0)
    audio_turns = first_audio_count(server)
    events: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert (await asyncio.wait_for(conn.recv(), 10)).type == "session.created"
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        updated = await asyncio.wait_for(conn.recv(), 10)
        assert updated.type == "session.updated" and updated.session.output_modalities == ["text"]
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
        )
        await conn.response.create()
        while True:
            event = await asyncio.wait_for(conn.recv(), 60)
            events.append(event)
            if event.type == "response.done":
                break
    kinds = [e.type for e in events]
    assert "error" not in kinds, [e for e in events if e.type == "error"]
    assert not [k for k in kinds if "audio" in k], kinds  # no audio, no audio transcript
    assert kinds.index("response.content_part.added") < kinds.index("response.output_text.delta")
    assert kinds.index("response.output_text.delta") < kinds.index("response.output_text.done")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done_text = next(e for e in events if e.type == "response.output_text.done").text
    response = events[-1].response
    assert response.status == "completed" and response.output_modalities == ["text"]
    part = response.output[0].content[0]
    assert part.type == "output_text" and part.text == done_text == text
    assert "paris" in text.lower(), text
    assert first_audio_count(server) == audio_turns  # the server made no speech for it


async def test_one_response_in_text_then_one_in_speech_in_beta_names(server):
    url = f"ws://{server}/v1/realtime?model=gpt-4o-realtime-preview"
    headers = {"Authorization": f"Bearer {TOKEN}", "OpenAI-Beta": "realtime=v1"}
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        assert (await recv(ws, 10))["session"]["modalities"] == ["text", "audio"]  # speech by default
        await ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        seen: list[dict[str, Any]] = []
        done = await until(ws, "response.done", seen)
        kinds = [e["type"] for e in seen]
        assert "response.text.delta" in kinds and not [k for k in kinds if "audio" in k], kinds
        text = "".join(e["delta"] for e in seen if e["type"] == "response.text.delta")
        assert next(e for e in seen if e["type"] == "response.text.done")["text"] == text
        assert done["response"]["modalities"] == ["text"]
        assert done["response"]["output"][0]["content"] == [{"type": "text", "text": text}]
        assert "paris" in text.lower(), text

        # The next response, with no options, is spoken again: the option held for one response.
        again = {**item, "content": [{"type": "input_text", "text": "Say hello."}]}
        await ws.send(json.dumps({"type": "conversation.item.create", "item": again}))
        await ws.send(json.dumps({"type": "response.create"}))
        seen = []
        done = await until(ws, "response.done", seen)
        kinds = [e["type"] for e in seen]
        assert "response.audio.delta" in kinds and "response.text.delta" not in kinds, kinds
        assert done["response"]["output"][0]["content"][0]["type"] == "audio"

        # Modalities voxloop cannot serve are an error, and the session goes on.
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["video"]}}))
        error = await recv(ws, 10)
        assert error["type"] == "error" and error["error"]["param"] == "response.output_modalities"


async def test_bad_events_are_errors_and_the_session_goes_on(server):
    url = f"ws://{server}/v1/realtime"
    protocols = ["realtime", f"openai-insecure-api-key.{TOKEN}"]
    async with websockets.connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "realtime"
        assert (await recv(ws, 10))["type"] == "session.created"
        bad = [
            ("{not json", "invalid_json"),
            (json.dumps({"type": "no.such.event", "event_id": "e7"}), "unknown_event"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}), "invalid_value"),
            (
                json.dumps(
                    {
                        "type": "session.update",
                        "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
                    }
                ),
                "invalid_audio_format",
            ),
            (json.dumps({"type": "response.cancel"}), "response_cancel_not_active"),
            (json.dumps({"type": "response.create"}), "no_user_input"),
            ("[" * 5000 + "]" * 5000, "invalid_json"),  # nested past Python's recursion limit
            # A lone surrogate (as JSON may write one) no request to the LLM can carry.
            ('{"type": "session.update", "session": {"instructions": "Be \\ud800 brief."}}', "invalid_event"),
        ]
        for text, code in bad:
            await ws.send(text)
            event = await recv(ws, 10)
            assert event["type"] == "error" and event["error"]["code"] == code, event
            assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}
            assert event["error"]["message"] and "Traceback" not in event["error"]["message"]
        assert event["error"]["event_id"] is None
        await ws.send(json.dumps({"type": "no.such.event", "event_id": "e7"}))
        assert (await recv(ws, 10))["error"]["event_id"] == "e7"
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}))  # fmt: skip
        updated = await recv(ws, 10)
        assert updated["type"] == "session.updated" and updated["session"]["instructions"] == "Be brief."


async def test_a_wrong_key_is_refused(server):
    for kwargs in (
        {"additional_headers": {"Authorization": "Bearer wrong"}},
        {"subprotocols": ["realtime", "openai-insecure-api-key.wrong"]},
        {},
    ):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"ws://{server}/v1/realtime", **kwargs):
                pass
        assert refused.value.response.status_code == 403
    client = openai.AsyncOpenAI(base_url=f"http://{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(websockets.InvalidStatus):
        async with client.realtime.connect(model="gpt-realtime"):
            pass
