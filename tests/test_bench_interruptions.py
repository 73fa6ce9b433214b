"""`voxloop bench --interruptions`: the scoring of each case, the command's output, and a short
real run (a cough, an "okay" and a "stop" over a reply, with headphones)."""

from __future__ import annotations

import json

import pytest

from voxloop.bench import interruptions
from voxloop.bench.interruptions import ROOMS, Outcome, interruptions_table, judged_right, summarize
from voxloop.cli import main
from voxloop.settings import Settings


def _went_on(kind: str = "backchannel", **changes) -> Outcome:
    """A sound over the reply that held it for 0.4 s; the reply then played to its end."""
    fields = dict(onset_s=2.3, playing=True, paused_at_s=2.35, resumed_at_s=2.75, all_played=True)
    return Outcome(kind, "Okay.", "hibari 1.0x seed 0", "headphones", **(fields | changes))


def _cut(
    said: str = "Hold on, what about cats?", new_turn: str | None = "Hold on. What about cats?", **changes
):
    fields = dict(onset_s=2.3, playing=True, paused_at_s=2.33, flushed_at_s=3.1, interrupted=True)
    fields |= dict(new_turn=new_turn) | changes
    return Outcome("interruption", said, "hibari 1.0x seed 0", "speakers+aec", **fields)


def test_a_sound_that_lets_the_reply_go_on_whole_is_right_and_anything_else_is_not():
    assert judged_right(_went_on())
    assert judged_right(_went_on("cough/noise", paused_at_s=None, resumed_at_s=None))  # never heard
    assert not judged_right(_went_on(resumed_at_s=None))  # held for good
    assert not judged_right(_went_on(flushed_at_s=3.0))
    assert not judged_right(_went_on(interrupted=True))
    assert not judged_right(_went_on(all_played=False))  # a piece of the reply was lost
    assert not judged_right(_went_on(playing=False))  # the reply was over: nothing to judge


def test_an_interruption_is_right_when_the_reply_is_cut_and_its_words_are_heard():
    assert judged_right(_cut())
    assert judged_right(_cut("Stop.", "Stop!"))
    assert not judged_right(_cut(new_turn="Hold on, what about hats?"))  # a word misheard
    assert not judged_right(_cut(new_turn=None))  # no new turn
    assert not judged_right(_cut(interrupted=False))
    assert not judged_right(_cut(flushed_at_s=None))


def test_the_summary_counts_right_cases_and_times_per_kind_and_room():
    outcomes = [
        _went_on(),
        _went_on(paused_at_s=2.3, resumed_at_s=3.5),
        _went_on(all_played=False, heard="Okay."),
        _cut(),
        _cut(flushed_at_s=3.3, new_turn="Whole on", paused_at_s=None, played_after_cut=2),
    ]
    rows = {(r["kind"], r["room"]): r for r in summarize(outcomes, ("kind", "room"))}
    nods, cuts = rows["backchannel", "headphones"], rows["interruption", "speakers+aec"]
    assert (nods["right"], nods["total"], nods["held"]) == (2, 3, 3)
    assert nods["resume_p50_ms"] == pytest.approx(400)
    assert nods["flush_p50_ms"] is None and nods["heard"] == ["Okay."]
    assert (cuts["right"], cuts["total"]) == (1, 2)
    assert cuts["flush_p50_ms"] == pytest.approx(900) and cuts["flush_p95_ms"] == pytest.approx(990)
    # Quiet at the first hold (30 ms), or at the cut of a reply never held (1000 ms).
    assert cuts["silence_p50_ms"] == pytest.approx(515) and cuts["silence_p95_ms"] == pytest.approx(951.5)
    assert cuts["played_after_cut"] == 2 and nods["played_after_cut"] == 0
    result = {
        "engines": ["hibari"],
        "missing": ["festival"],
        "interrupt_ms": 700,
        "summary": list(rows.values()),
        "sounds": summarize(outcomes, ("kind", "sound", "room")),
    }
    table = interruptions_table(result)
    assert "backchannel   headphones      2/3" in table
    assert "900 / 990" in table and "515 / 952" in table and "not installed: festival" in table
    assert (cuts["cut"], nods["cut"]) == (2, 0)


def test_the_command_prints_the_result_as_json(monkeypatch, capsys):
    seen = {}

    def fake(settings, limit, say):
        seen.update(limit=limit, interrupt_ms=settings.vad.interrupt_ms)
        return {"summary": [], "sounds": [], "cases": [], "engines": ["hibari"], "missing": []}

    monkeypatch.setattr(interruptions, "run_interruptions", fake)
    assert main(["bench", "--interruptions", "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["engines"] == ["hibari"]
    assert seen == {"limit": 2, "interrupt_ms": 700}


@pytest.mark.integration
def test_a_short_run_judges_an_okay_and_a_stop_over_a_reply_right():
    result = interruptions.run_interruptions(
        Settings(), limit=3, say=lambda _: None, engines=("hibari",), rooms=ROOMS[:1]
    )
    result = json.loads(json.dumps(result))  # what --json prints
    assert set(result) >= {"engines", "missing", "interrupt_ms", "summary", "sounds", "cases"}
    cases = result["cases"]
    assert [c["kind"] for c in cases] == ["cough/noise", "backchannel", "interruption"]
    assert {c["room"] for c in cases} == {"headphones"}
    for row in result["summary"]:
        assert set(row) >= {"kind", "room", "right", "total", "held", "resume_p50_ms", "flush_p50_ms"}
    nod, stop = cases[1], cases[2]
    assert nod["sound"] == "Okay." and nod["right"], nod
    assert nod["paused_at_s"] is not None and nod["resumed_at_s"] > nod["paused_at_s"]
    assert stop["sound"] == "Stop." and stop["right"], stop
    assert 0 < stop["flushed_at_s"] - stop["onset_s"] <= 1.5
    assert stop["played_after_cut"] == 0  # nothing of the reply is voiced once it is cut
    assert sum(r["right"] for r in result["summary"]) >= 2


def test_endpointing_and_interruptions_run_as_one_benchmark_with_one_report(monkeypatch, capsys):
    import contextlib

    from voxloop import app
    from voxloop.bench import endpointing

    monkeypatch.setattr(
        app, "llm_urls", lambda settings, printer: contextlib.nullcontext(["http://127.0.0.1:9"])
    )
    monkeypatch.setattr(
        endpointing, "run_endpointing", lambda settings, url, finished, pauses, limit, say: {"url": url}
    )
    monkeypatch.setattr(
        interruptions,
        "run_interruptions",
        lambda settings, limit, say: {"engines": ["hibari"], "limit": limit},
    )
    assert main(["bench", "--endpointing", "--interruptions", "--limit", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "endpointing": {"url": "http://127.0.0.1:9"},
        "interruptions": {"engines": ["hibari"], "limit": 1},
    }
