"""The turn model (Smart Turn v3.2 from the pipecat-ai wheel): pinned and verified, hears a
finished question from a phrase cut short, and steers the endpointer: a finished question ends
sooner than on silence and words alone, a pause of a second mid-phrase does not end the turn,
and without the package voxloop endpoints as before, with a warning."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import wer
from kit import ScriptedChat, Voice, Words
from voxloop import pipeline
from voxloop.audio import save_wav
from voxloop.audio.decode import load_audio
from voxloop.audio.sink import NullSink
from voxloop.audio.sources import ArraySource
from voxloop.audio.speech import spoken_turns
from voxloop.events import SpeechEnded
from voxloop.packaged import Part, assembled, part_path
from voxloop.pipeline import Assistant
from voxloop.printer import CollectingPrinter
from voxloop.settings import Settings, VadSettings
from voxloop.vad.endpointer import STEP, SileroEndpointer
from voxloop.vad.turn import SMART_TURN, features, load_turn_model, shared_turn_model

QUESTION = "What is the capital of France?"
PAUSE_SET = Path(__file__).resolve().parents[1] / "benchmarks" / "pauses"


def pauses_in(samples: np.ndarray) -> list[SpeechEnded]:
    """What the turn model is asked about: the speculative end at each pause's first silent step."""
    endpointer = SileroEndpointer(VadSettings(adaptive=False, end_silence_ms=60_000))
    blocks = ArraySource(samples, tail_silence_s=0.5).iter_blocks()
    return [e for b in blocks for e in endpointer.feed(b) if isinstance(e, SpeechEnded) and not e.final]


def cut_phrase(synthesizer, before: str, after: str, pause_s: float) -> np.ndarray:
    """``before``, a pause of ``pause_s``, ``after``: two phrases spoken on their own and joined."""
    first = spoken_turns(synthesizer, [before], lead_s=0.5, turn_gap_s=0)
    rest = spoken_turns(synthesizer, [after], lead_s=0.0)
    return np.concatenate([first[: len(first) - 8000], np.zeros(int(pause_s * 16000), np.float32), rest])


# -- the model ---------------------------------------------------------------------------------
@pytest.mark.integration
def test_the_model_loads_from_the_wheel_with_its_pinned_hash(caplog):
    path = part_path(SMART_TURN, 0)
    assert path is not None and path.name == "smart-turn-v3.2-cpu.onnx" and "pipecat" in path.parts
    assert load_turn_model() is not None
    assert assembled(SMART_TURN)  # verified: the next start does not hash it again
    # A file that does not hash to the pin is refused and named, with the command that fixes it.
    wrong = dataclasses.replace(SMART_TURN, file="smart-turn/other.onnx", sha256="0" * 64)
    with caplog.at_level(logging.WARNING, logger="voxloop.vad.turn"):
        assert load_turn_model(wrong) is None
    assert "corrupt" in caplog.text
    assert "pip install --force-reinstall --no-deps pipecat-ai==1.14.0" in caplog.text


def test_a_missing_package_is_a_warning_that_names_the_install():
    missing = dataclasses.replace(
        SMART_TURN, parts=(Part("voxloop-no-such-wheel", SMART_TURN.size, SMART_TURN.sha256, "x.onnx"),)
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("voxloop.vad.turn").addHandler(handler)
    try:
        assert load_turn_model(missing) is None
    finally:
        logging.getLogger("voxloop.vad.turn").removeHandler(handler)
    (record,) = records
    assert record.levelno == logging.WARNING
    assert "pip install --no-deps voxloop-no-such-wheel==1.14.0" in record.getMessage()
    assert "\n" not in record.getMessage()


@pytest.mark.integration
def test_features_match_pipecats_own(synthesizer):
    """voxloop's features (faster-whisper's extractor) are what the model was trained on: the
    wheel's own numpy copy of transformers' Whisper extractor."""
    path = part_path(SMART_TURN, 0)
    assert path is not None
    spec = importlib.util.spec_from_file_location("_wf", path.parents[1] / "_whisper_features.py")
    assert spec is not None and spec.loader is not None
    theirs_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs_module)
    for audio in (pauses_in(spoken_turns(synthesizer, [QUESTION]))[-1].audio, np.zeros(16000, np.float32)):
        padded = np.concatenate([np.zeros(128000 - len(audio), np.float32), audio])  # pipecat pads left
        theirs = theirs_module.compute_whisper_log_mel_features(padded, do_normalize=True)
        ours = features(audio)
        assert ours.shape == (1, 80, 800) and ours.dtype == np.float32
        assert np.abs(ours[0] - theirs).max() < 2e-3


@pytest.mark.integration
def test_a_finished_question_sounds_finished_and_a_phrase_cut_short_does_not(synthesizer):
    model = shared_turn_model()
    assert model is not None
    sure = VadSettings().turn_threshold
    assert model.probability(pauses_in(spoken_turns(synthesizer, [QUESTION]))[-1].audio) >= sure
    # Phrases broken off where a speaker pauses for the next word, from the mid-phrase pause set
    # (hibari, the whole sentence spoken at once with a comma there, the pause stretched): the
    # voice carries on, so the model says not finished; at the real end it says finished.
    # (A phrase synthesized on its own, "I would like to order a", ends in a sentence's falling
    # tone and is heard as finished: 0.97.)
    for name in ("p17.flac", "p25.flac"):  # "How do I get to, …", "What's the weather like in, um, …"
        pauses = pauses_in(load_audio(PAUSE_SET / name))
        assert model.probability(pauses[0].audio) < 0.5, name
        assert model.probability(pauses[-1].audio) >= sure, name


# -- the endpointer's wait ---------------------------------------------------------------------
class ScriptedVad:
    def __init__(self, probs: list[float]) -> None:
        self.probs = list(probs)

    def probability(self, step: np.ndarray) -> float:
        return self.probs.pop(0) if self.probs else 0.0

    def reset(self) -> None:
        return None


def _end_after(turn_p: float | None, words: bool | None, settings: VadSettings | None = None) -> float:
    """Silence (ms) after which a 0.64 s utterance ends, told ``turn_p`` and ``words`` at the
    first silent step."""
    endpointer = SileroEndpointer(settings or VadSettings(), vad=ScriptedVad([0.9] * 20))  # type: ignore[arg-type]
    block = np.zeros(STEP, np.float32)
    for step in range(200):
        for event in endpointer.feed(block):
            if isinstance(event, SpeechEnded) and not event.final:
                if turn_p is not None:
                    endpointer.turn(event, turn_p)
                if words is not None:
                    endpointer.hint(words)
            elif isinstance(event, SpeechEnded):
                return (step + 1 - 20) * STEP / 16
    raise AssertionError("the turn never ended")


def test_the_voice_sets_the_wait_and_the_words_can_only_lengthen_it():
    s = VadSettings()
    step_ms = STEP / 16

    def about(ms: float) -> Callable[[float], bool]:
        return lambda got: ms <= got < ms + step_ms

    assert about(s.end_silence_ms)(_end_after(None, None))  # nothing known: as before
    assert about(s.complete_silence_ms)(_end_after(None, True))  # the words alone: as before
    assert about(s.incomplete_silence_ms)(_end_after(None, False))
    assert about(s.turn_complete_ms)(_end_after(0.99, None))  # surely finished
    assert about(s.turn_complete_ms)(_end_after(0.99, True))
    assert about(s.turn_incomplete_ms)(_end_after(0.99, False))  # "…for?" holds it open
    assert about(s.turn_unsure_ms)(_end_after(0.8, True))  # leans to finished, words agree
    assert about(s.turn_incomplete_ms)(_end_after(0.8, None))
    assert about(s.turn_incomplete_ms)(_end_after(0.05, True))  # the voice is not done
    # Not adaptive: one fixed silence, whatever anyone says.
    assert about(s.end_silence_ms)(_end_after(0.99, True, VadSettings(adaptive=False)))


def test_an_answer_for_a_pause_that_is_over_is_ignored():
    endpointer = SileroEndpointer(VadSettings(), vad=ScriptedVad([0.9] * 20 + [0.0] * 3 + [0.9] * 5))  # type: ignore[arg-type]
    block = np.zeros(STEP, np.float32)
    first = None
    for _ in range(28):  # speech, a 96 ms pause (reported), speech again
        for event in endpointer.feed(block):
            if isinstance(event, SpeechEnded):
                first = event
    assert first is not None and not first.final
    endpointer.turn(first, 0.99)  # too late: the user went on
    assert endpointer.wait_ms() == VadSettings().end_silence_ms


# -- through the pipeline ----------------------------------------------------------------------
async def _endpoint_wait(samples: np.ndarray, settings: Settings) -> list[float]:
    chat = ScriptedChat(["Paris."], context_tokens=2048)
    assistant = Assistant(settings, Words(QUESTION), chat, Voice(), NullSink(), CollectingPrinter())
    return [t.timings["endpoint_wait_ms"] for t in await assistant.run(ArraySource(samples))]


@pytest.mark.integration
async def test_without_the_package_voxloop_endpoints_as_before_with_a_warning(
    synthesizer, monkeypatch, caplog
):
    samples = spoken_turns(synthesizer, [QUESTION])
    settings = Settings(vad=VadSettings(turn_model=True))
    with_model = await _endpoint_wait(samples, settings)
    missing = dataclasses.replace(
        SMART_TURN, parts=(Part("voxloop-no-such-wheel", SMART_TURN.size, SMART_TURN.sha256, "x.onnx"),)
    )
    monkeypatch.setattr(pipeline, "shared_turn_model", lambda: load_turn_model(missing))
    with caplog.at_level(logging.WARNING, logger="voxloop.vad.turn"):
        without = await _endpoint_wait(samples, settings)
    assert "pip install --no-deps voxloop-no-such-wheel==1.14.0" in caplog.text
    # The words alone end a finished question after complete_silence_ms, as before the model.
    assert len(without) == 1 and settings.vad.complete_silence_ms <= without[0] < 500
    assert len(with_model) == 1 and with_model[0] <= 250


@pytest.mark.integration
def test_chat_a_finished_question_ends_sooner_with_the_turn_model(speech, voxloop, llm_server):
    wav = str(speech([QUESTION]))
    waits = {}
    for flags in (("--turn-model",), ("--no-turn-model",)):
        run = voxloop("chat", "--input", wav, "--llm-url", llm_server, "--no-speak", "--json", *flags)
        assert run.code == 0, run.err
        (done,) = [e for e in run.events() if e["type"] == "turn_done"]
        waits[flags] = done["timings"]["endpoint_wait_ms"]
    assert waits[("--turn-model",)] <= 250 < waits[("--no-turn-model",)], waits


@pytest.mark.integration
def test_chat_a_pause_of_a_second_mid_phrase_is_one_turn(synthesizer, voxloop, llm_server, tmp_path):
    wav = tmp_path / "order.wav"
    save_wav(
        wav, cut_phrase(synthesizer, "I would like to", "order a large pizza with mushrooms.", 1.0), 16000
    )
    turns = {}
    for flags in (("--turn-model",), ("--no-turn-model",)):
        run = voxloop("chat", "--input", str(wav), "--llm-url", llm_server, "--no-speak", "--json", *flags)
        assert run.code == 0, run.err
        turns[flags] = [e["user"] for e in run.events() if e["type"] == "turn_done"]
    assert len(turns[("--turn-model",)]) == 1, turns
    assert wer("I would like to order a large pizza with mushrooms", turns[("--turn-model",)][0]) <= 0.25
    # The control: on words alone ("…to": 0.9 s) a second's pause ends the turn.
    assert len(turns[("--no-turn-model",)]) == 2, turns
