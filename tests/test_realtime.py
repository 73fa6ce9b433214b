"""--realtime: a file fed at speech speed emits the live event sequence; `voxloop bench` runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from conftest import wer
from voxloop.audio.decode import load_audio

pytestmark = pytest.mark.integration


def test_realtime_event_sequence(speech, voxloop, llm_server):
    question = "Could you please tell me what the weather is usually like in Paris in spring?"
    run = voxloop(
        "chat",
        "--input",
        str(speech([question])),
        "--realtime",
        "--json",
        "--no-speak",
        "--llm-url",
        llm_server,
    )
    assert run.code == 0, run.err
    kinds = [e["type"] for e in run.events()]
    # One turn, in the order a live microphone produces it.
    core = [k for k in kinds if k not in {"reply_delta", "partial"}]
    assert core == ["ready", "speech_started", "speech_ended", "transcript", "first_audio", "turn_done"], (
        kinds
    )
    assert "partial" in kinds  # interim transcripts while the user was still talking
    assert kinds.index("partial") < kinds.index("speech_ended")
    events = run.events()
    partials = [e["text"] for e in events if e["type"] == "partial"]
    assert any(p.lower().startswith("could you") for p in partials), partials
    ended = next(e for e in events if e["type"] == "speech_ended")
    done = next(e for e in events if e["type"] == "turn_done")
    assert wer(question, done["user"]) <= 0.25
    t = done["timings"]
    assert t["speech_end_to_first_audio_ms"] >= t["endpoint_wait_ms"] > 0
    assert ended["endpoint_at_s"] > ended["end_s"]
    for key in ("stt_ms", "llm_first_token_ms", "first_sentence_ms", "first_tts_ms", "tts_ms"):
        assert t[key] > 0, key


def test_a_pause_mid_phrase_does_not_end_the_turn(mid_phrase_pause, voxloop, llm_server):
    """Speculation on a pause inside an unfinished phrase is called off when the user goes on."""
    wav = mid_phrase_pause
    run = voxloop("chat", "--input", str(wav), "--realtime", "--json", "--no-speak", "--llm-url", llm_server)
    assert run.code == 0, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    assert len(done) == 1, [d["user"] for d in done]
    assert wer("I would like to order a large pizza with mushrooms", done[0]["user"]) <= 0.25


def test_bench_runs_and_compares_both_pipelines(speech, voxloop, llm_server, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    texts = ["Yes.", "What is the capital of France and what is it famous for?"]
    src = speech(texts, turn_gap_s=3.0)
    audio = load_audio(src)
    sf.write(folder / "one.flac", audio, 16000)
    # Where each turn's speech lies: found from the audio itself (hibari's trimmed speech).
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    gaps = np.flatnonzero(np.diff(loud) > 16000)
    bounds = [(loud[0], loud[gaps[0]]), (loud[gaps[0] + 1], loud[-1])]
    turns = [
        {"text": t, "start_s": a / 16000, "end_s": b / 16000} for t, (a, b) in zip(texts, bounds, strict=True)
    ]
    (folder / "manifest.json").write_text(
        json.dumps({"sample_rate": 16000, "recordings": [{"file": "one.flac", "turns": turns}]})
    )
    plot = tmp_path / "bench.png"
    run = voxloop("bench", "--set", str(folder), "--llm-url", llm_server, "--json", "--plot", str(plot))
    assert run.code == 0, run.err
    summary = json.loads(run.out)["summary"]
    assert summary["voxloop"]["answered"] == 2
    assert summary["reference"]["dropped"] == ["Yes."]  # the reference drops turns under 2 s
    assert 0 < summary["ratio_p50"] < 1
    assert plot.stat().st_size > 10_000


def test_bench_load_reports_time_to_first_token_per_level(voxloop, llm_server):
    run = voxloop("bench", "--load", "1,2", "--llm-url", llm_server, "--json")
    assert run.code == 0, run.err
    rows = json.loads(run.out)
    assert [r["sessions"] for r in rows] == [1, 2]
    assert [r["requests"] for r in rows] == [4, 8]
    assert all(r["errors"] == 0 and r["ttft_p50_ms"] > 0 for r in rows)


def test_bench_load_rejects_a_bad_level_list(voxloop):
    run = voxloop("bench", "--load", "one,two", "--llm-url", "http://127.0.0.1:9/v1")
    assert run.code == 2 and "1,2,4,8" in run.err


def test_bench_sessions_drives_voxloop_serve(voxloop, llm_server):
    run = voxloop("bench", "--sessions", "1", "--llm-url", llm_server, "--json")
    assert run.code == 0, run.err
    (row,) = json.loads(run.out)
    assert row["sessions"] == 1 and row["turns"] == 3 and row["errors"] == 0
    assert 0 < row["first_audio_p50_ms"] < 5000


def test_bench_soak_reports_first_audio_and_memory_per_window(voxloop):
    """A short soak on the embedded server voxloop starts: memory of voxloop and of that
    server is sampled (the server is voxloop's child), next to first audio."""
    run = voxloop("bench", "--soak", "3", "--json", timeout=300)
    assert run.code == 0, run.err
    result = json.loads(run.out)
    assert result["turns"] == 3 and result["answered"] == 3, result
    (window,) = result["windows"]
    assert 100 < window["voxloop_rss_mb"] < 8000 and 50 < window["server_rss_mb"] < 8000, window
    assert 0 < window["first_audio_median_ms"] < 5000
