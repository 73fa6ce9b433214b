"""Whatever an LLM replies, voxloop speaks what can be spoken and goes on: numbers no voice can
read, a server that ignores max_tokens, a reply that is only a loop, a server that stalls or
dies mid-reply, an event stream split over lines. The LLM here is a stand-in on loopback (the
test proxy) that answers what each test plans; STT, VAD and TTS are the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import soundfile as sf

from voxloop.bench.score import normalize
from voxloop.reply import NOTHING_TO_SAY

BIG = "1" + "0" * 39  # hibari's number reader stops at 36 digits
LONG = "7305918264402817365918472039655193048276"  # forty digits, not one pattern


def _chat(voxloop, wav: Path, proxy, out: Path, env: dict[str, str] | None = None):
    run = voxloop(
        "chat", "--input", str(wav), "--llm-url", proxy.url, "--no-speak", "--json", "-o", str(out),
        extra_env=env,
    )  # fmt: skip
    assert "Traceback" not in run.err, run.err
    done = [e for e in run.events() if e["type"] == "turn_done"]
    saved = [json.loads(line) for line in (out / "conversation.jsonl").read_text().splitlines()]
    return run, done, saved


def _seconds(path: str | None) -> float:
    assert path, "no reply audio"
    info = sf.info(path)
    return info.frames / info.samplerate


def test_a_number_no_voice_can_read_is_read_digit_by_digit_and_the_next_turn_works(
    speech, voxloop, proxy, tmp_path
):
    wav = speech(["How many stars are there?", "What is the capital of France?"], turn_gap_s=6.0)
    proxy.plan = [f"say:There are {BIG} stars.", "ok"]
    run, done, saved = _chat(voxloop, wav, proxy, tmp_path / "out")
    assert run.code == 0, run.err
    assert len(done) == 2 and all(d["error"] is None for d in done), done
    assert BIG in done[0]["assistant"]
    assert _seconds(done[0]["reply_audio"]) > 5  # forty digits, each said
    assert done[1]["assistant"] and len(saved) == 2


def test_voxloop_say_reads_a_forty_digit_number_digit_by_digit(voxloop, tmp_path):
    out = tmp_path / "stars.wav"
    run = voxloop("say", f"There are {LONG} stars.", "-o", str(out))
    assert run.code == 0 and "Traceback" not in run.err, run.err
    heard = voxloop("transcribe", str(out), "--json")
    text = normalize(" ".join(e["text"] for e in heard.events()))
    assert "stars" in text and sum(c.isdigit() for c in text) >= 20, text


def test_a_server_that_ignores_max_tokens_is_cut_at_voxlooops_own_budget(speech, voxloop, proxy, tmp_path):
    wav = speech(["Tell me a story.", "What is the capital of France?"], turn_gap_s=6.0)
    proxy.plan = ["flood", "ok"]
    run, done, _ = _chat(voxloop, wav, proxy, tmp_path / "out")
    assert run.code == 0, run.err
    assert len(done) == 2, done
    assert len(done[0]["assistant"]) < 96 * 8 + 10  # the reply budget, not 20,000 characters
    assert _seconds(done[0]["reply_audio"]) < 90  # the flood spoken whole was 1,185 s
    assert done[1]["assistant"]


def test_a_reply_that_is_only_a_loop_gets_a_spoken_apology(speech, voxloop, proxy, tmp_path):
    wav = speech(["Sing me a song."])
    proxy.plan = ["say:la la la la la la la la la la la la", "say:na na na na na na na na na na"]
    run, done, _ = _chat(voxloop, wav, proxy, tmp_path / "out")
    assert run.code == 0, run.err
    assert done[0]["assistant"] == NOTHING_TO_SAY
    heard = voxloop("transcribe", done[0]["reply_audio"], "--json")
    assert "lost my words" in " ".join(e["text"] for e in heard.events()).lower()


def test_a_server_that_stalls_mid_reply_is_told_and_the_reply_completes(speech, voxloop, proxy, tmp_path):
    wav = speech(["Tell me about Paris."])
    proxy.plan = ["stall:7:Paris is the capital of France. It is known for the Eiffel Tower."]
    run, done, _ = _chat(voxloop, wav, proxy, tmp_path / "out")
    assert run.code == 0, run.err
    notices = [e["message"] for e in run.events() if e["type"] == "error"]
    assert any("sent nothing for 5 s" in n for n in notices), run.out
    assert done[0]["assistant"].endswith("Eiffel Tower.")


def test_an_event_split_over_data_lines_is_read_as_one(speech, voxloop, proxy, tmp_path):
    wav = speech(["What is the capital of France?"])
    proxy.plan = ["multiline:The capital of France is Paris."]
    run, done, _ = _chat(voxloop, wav, proxy, tmp_path / "out")
    assert run.code == 0, run.err
    assert done[0]["assistant"] == "The capital of France is Paris."


def test_what_was_said_before_the_server_died_stays_in_the_history(speech, voxloop, proxy, tmp_path):
    """The server goes away after its first sentence: the user heard it, so it is kept."""
    wav = speech(["Tell me about Paris.", "What is the capital of France?"], turn_gap_s=6.0)
    proxy.plan = ["stall:30:Paris is lovely in spring. It has many museums.", "ok"]
    # The reply's read time-out ends the stalled stream: the server is as good as gone.
    run, _, saved = _chat(voxloop, wav, proxy, tmp_path / "out", {"VOXLOOP_LLM_TIMEOUT_S": "8"})
    assert run.code == 6, run.err  # a turn got no complete reply
    assert saved[0]["error"] and saved[0]["assistant"] == "Paris is lovely in spring. …"
    second = proxy.chats[1]["messages"]
    assert [m["content"] for m in second[1:3]] == [saved[0]["user"], "Paris is lovely in spring. …"]
    assert saved[1]["error"] is None and saved[1]["assistant"]
