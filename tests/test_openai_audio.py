"""`voxloop serve`'s OpenAI-compatible audio endpoints (issue 17), through the official openai
client against a real server with the real models: speech made by hibari transcribed to the
right words in every response format and as a stream, the server's own speech transcribed back
in each audio format, errors in OpenAI's shape; and the subtitle and WAV helpers on their own."""

from __future__ import annotations

import io
import itertools
import re
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf

from conftest import wer
from test_serve import TOKEN, start_serve
from voxloop.server.audio_formats import encoder_for, wav_header
from voxloop.server.subtitles import timestamp, to_srt, to_vtt
from voxloop.stt.whisper import TimedSegment

integration = pytest.mark.integration

QUESTION = "What is the capital of France?"
# Eight turns with pauses: over 30 s, so Whisper reads it in more than one window.
STORY = [
    "The train to the coast leaves at nine in the morning.",
    "Bring a warm coat, because the wind is cold by the sea.",
    "We will walk along the beach until lunch.",
    "After lunch there is a boat trip to the lighthouse.",
    "The boat is small, so only twelve people can go.",
    "In the evening we will eat fish in the old harbour.",
    "The last train home leaves at ten at night.",
    "Please do not miss it, or you will sleep on the station bench.",
]
SENTENCE = "The quick brown fox jumps over the lazy dog."
MAGIC = {
    "mp3": (b"ID3", b"\xff\xf3", b"\xff\xfb"),
    "opus": (b"OggS",),
    "flac": (b"fLaC",),
    "aac": (b"\xff\xf1",),
}


# -- the server and its client ----------------------------------------------------------------
@pytest.fixture(scope="module")
def server(llm_server, tmp_path_factory) -> Iterator[str]:
    proc, base = start_serve(llm_server, str(tmp_path_factory.mktemp("openai-home")))
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server}/v1", api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def story(speech):
    return speech(STORY, turn_gap_s=2.0)


def transcribe_back(client: openai.OpenAI, name: str, data: bytes) -> str:
    return client.audio.transcriptions.create(model="whisper-1", file=(name, data)).text


def wav_of_pcm(pcm: bytes, rate: int = 24000) -> bytes:
    out = io.BytesIO()
    sf.write(out, np.frombuffer(pcm, "<i2"), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


# -- transcription ----------------------------------------------------------------------------
@integration
def test_models_list_names_what_is_served(client, server):
    llm = httpx.get(f"http://{server}/health").json()["model"]
    assert [m.id for m in client.models.list()] == ["whisper-tiny.en", "hibari-heart", llm]


@integration
def test_a_spoken_question_is_transcribed(client, speech):
    path = speech([QUESTION])
    with path.open("rb") as f:
        started = time.perf_counter()
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
        print(
            f"\ntranscription of {sf.info(path).duration:.1f} s: {(time.perf_counter() - started) * 1000:.0f} ms"
        )
    assert wer(QUESTION, result.text) <= 0.25, result.text
    text = client.audio.transcriptions.create(model="whisper-1", file=path, response_format="text")
    assert isinstance(text, str) and wer(QUESTION, text) <= 0.25, text


@integration
def test_a_long_recording_comes_back_in_timed_segments(client, story):
    duration = sf.info(story).duration
    assert duration > 30
    started = time.perf_counter()
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=story, response_format="verbose_json"
    )
    print(f"\nverbose_json of {duration:.1f} s: {(time.perf_counter() - started) * 1000:.0f} ms")
    assert verbose.duration == pytest.approx(duration, abs=0.05)
    assert verbose.language == "en"
    assert wer(" ".join(STORY), verbose.text) <= 0.25, verbose.text
    segments = verbose.segments or []
    assert len(segments) >= 4
    assert all(s.start < s.end for s in segments)
    assert all(a.end <= b.start + 0.01 for a, b in itertools.pairwise(segments))
    assert 30 < segments[-1].end <= duration + 0.5  # past Whisper's first 30 s window
    assert [s.id for s in segments] == list(range(len(segments)))

    srt = client.audio.transcriptions.create(model="whisper-1", file=story, response_format="srt")
    cues = srt.strip().split("\n\n")
    assert len(cues) >= 4
    for number, cue in enumerate(cues, start=1):
        assert re.fullmatch(rf"{number}\n\d\d:\d\d:\d\d,\d{{3}} --> \d\d:\d\d:\d\d,\d{{3}}\n.+", cue), cue
    vtt = client.audio.transcriptions.create(model="whisper-1", file=story, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n")
    for cue in vtt[len("WEBVTT\n\n") :].strip().split("\n\n"):
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+", cue), cue
    assert wer(" ".join(STORY), " ".join(c.split("\n", 2)[2] for c in cues)) <= 0.25


@integration
def test_speech_that_repeats_itself_is_all_transcribed(client, speech):
    """Ten times the same sentence fills Whisper's windows with repetitive text; every one is
    said, so every one is transcribed (none mistaken for a looping decoder)."""
    line = "The train to the coast leaves at nine in the morning."
    path = speech([line] * 10, turn_gap_s=1.0)
    assert sf.info(path).duration > 30
    verbose = client.audio.transcriptions.create(model="whisper-1", file=path, response_format="verbose_json")
    segments = verbose.segments or []
    assert len(segments) == 10, verbose.text
    assert all(wer(line, s.text) <= 0.2 for s in segments), verbose.text


@integration
def test_stream_true_sends_deltas_then_the_whole_text(client, story):
    events = list(client.audio.transcriptions.create(model="whisper-1", file=story, stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done"
    assert len(events) >= 3
    deltas = "".join(e.delta for e in events[:-1])  # type: ignore[union-attr]
    assert deltas == events[-1].text  # type: ignore[union-attr]
    assert wer(" ".join(STORY), deltas) <= 0.25, deltas


@integration
def test_a_file_that_is_not_audio_is_a_400_with_a_clear_message(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.transcriptions.create(
            model="whisper-1", file=("notes.txt", b"my notes, not a recording")
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "file" and error["type"] == "invalid_request_error"
    assert "'notes.txt'" in error["message"] and "not a readable audio file" in error["message"]
    assert "/tmp" not in error["message"] and "Traceback" not in error["message"]
    with pytest.raises(openai.BadRequestError, match="empty"):
        client.audio.transcriptions.create(model="whisper-1", file=("empty.wav", b""))
    with pytest.raises(openai.BadRequestError, match="response_format") as info:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"x"), response_format="docx")  # type: ignore[call-overload]
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "response_format"


@integration
def test_an_upload_over_25_mb_is_a_413(client):
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", bytes(26 * 1024 * 1024)))
    assert info.value.status_code == 413 and "25 MB" in info.value.message


@integration
def test_a_wrong_token_is_refused_with_401(server):
    intruder = openai.OpenAI(base_url=f"http://{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        intruder.models.list()
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        intruder.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
    with pytest.raises(openai.AuthenticationError):
        intruder.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"x"))


# -- speech -----------------------------------------------------------------------------------
@integration
def test_speech_as_wav_is_24_khz_and_says_the_words(client):
    data = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
    ).content
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels) == (24000, 1) and info.duration > 1.5
    assert wer(SENTENCE, transcribe_back(client, "speech.wav", data)) <= 0.25


@integration
@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_compressed_speech_says_the_words(client, fmt):
    data = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format=fmt
    ).content
    assert data.startswith(MAGIC[fmt]), data[:8]
    assert wer(SENTENCE, transcribe_back(client, f"speech.{fmt}", data)) <= 0.25


@integration
def test_pcm_is_16_bit_mono_at_24_khz(client):
    pcm = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="pcm"
    ).content
    wav = client.audio.speech.create(
        model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
    ).content
    assert len(pcm) / 2 / 24000 == pytest.approx(sf.info(io.BytesIO(wav)).duration, rel=0.1)
    assert wer(SENTENCE, transcribe_back(client, "pcm.wav", wav_of_pcm(pcm))) <= 0.25


@integration
def test_speech_streams_sentence_by_sentence(client):
    text = " ".join(STORY[:5])
    chunks: list[tuple[float, bytes]] = []
    started = time.perf_counter()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        for chunk in response.iter_bytes():
            chunks.append((time.perf_counter() - started, chunk))
    first, total = chunks[0][0], chunks[-1][0]
    print(f"\nspeech of {len(text)} characters: first byte {first * 1000:.0f} ms, all {total * 1000:.0f} ms")
    assert len(chunks) >= 3 and first < total / 2  # the first sentence came while the rest was made
    pcm = b"".join(c for _, c in chunks)
    assert len(pcm) / 2 / 24000 > 10
    assert wer(text, transcribe_back(client, "story.wav", wav_of_pcm(pcm))) <= 0.25


@integration
def test_speed_changes_the_pace_and_stays_in_range(client):
    def seconds(speed: float) -> float:
        data = client.audio.speech.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="wav", speed=speed
        ).content
        return float(sf.info(io.BytesIO(data)).duration)

    normal, fast, slow = seconds(1.0), seconds(2.0), seconds(0.5)
    assert 0.4 < fast / normal < 0.65 and 1.6 < slow / normal < 2.5, (normal, fast, slow)
    assert 0.15 < seconds(4.0) / normal < 0.35  # past hibari's own range: time-stretched
    with pytest.raises(openai.BadRequestError) as info:
        seconds(5.0)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "speed"


@integration
def test_bad_speech_requests_are_400s(client):
    with pytest.raises(openai.BadRequestError, match="mp3, opus, aac, flac, wav, pcm"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="ogg")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="input"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    with pytest.raises(openai.BadRequestError, match="4096"):
        client.audio.speech.create(model="tts-1", voice="alloy", input="word " * 1000)


# -- the helpers, without models --------------------------------------------------------------
def segment(i: int, start: float, end: float, text: str) -> TimedSegment:
    return TimedSegment(i, 0, start, end, text, (), 0.0, -0.2, 1.2, 0.01)


def test_timestamps_round_to_milliseconds_and_carry():
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(3661.5) == "01:01:01,500"
    assert timestamp(59.9996) == "00:01:00,000"
    assert timestamp(7.25, ".") == "00:00:07.250"
    assert timestamp(-0.01) == "00:00:00,000"


def test_srt_and_vtt_cues():
    segments = [segment(0, 0.0, 2.5, " Hello there."), segment(1, 2.5, 61.04, "How are you?")]
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:00:02,500 --> 00:01:01,040\nHow are you?\n\n"
    )
    assert to_vtt(segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n00:00:02.500 --> 00:01:01.040\nHow are you?\n\n"
    )
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"


def test_streamed_wav_header_reads_as_a_whole_file():
    encoder = encoder_for("wav", 24000)
    tone = np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000).astype(np.float32) * 0.5
    data = encoder.encode(tone) + encoder.encode(tone) + encoder.finish()
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    samples, rate = sf.read(io.BytesIO(data))
    assert rate == 24000 and len(samples) == 48000
    assert len(wav_header(16000, 100)) == 44 and wav_header(16000, 100)[4:8] == (136).to_bytes(4, "little")
    with pytest.raises(ValueError, match="Unsupported response_format 'ogg'"):
        encoder_for("ogg", 24000)
