"""Real Silero VAD, real faster-whisper tiny.en, real hibari: turns, transcripts, formats."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import noise, wer
from voxloop.audio.decode import load_audio
from voxloop.audio.sources import ArraySource
from voxloop.events import SpeechEnded
from voxloop.settings import VadSettings
from voxloop.vad import make_endpointer

pytestmark = pytest.mark.integration


def turns_in(samples: np.ndarray, settings: VadSettings | None = None) -> list[SpeechEnded]:
    endpointer = make_endpointer(settings or VadSettings())
    blocks = ArraySource(samples).iter_blocks()
    return [e for block in blocks for e in endpointer.feed(block) if isinstance(e, SpeechEnded) and e.final]


def test_one_word_yes_is_a_turn_but_the_reference_drops_it(speech, transcriber):
    samples = load_audio(speech(["Yes."]))
    ours = turns_in(samples)
    assert len(ours) == 1
    assert transcriber.transcribe(ours[0].audio).lower().strip(".!") == "yes"
    assert turns_in(samples, VadSettings(engine="webrtc")) == []


def test_two_turns_are_two_turns(speech, transcriber):
    samples = load_audio(speech(["What is the capital of France?", "Tell me a joke about cats."]))
    turns = turns_in(samples)
    assert len(turns) == 2
    assert wer("what is the capital of france", transcriber.transcribe(turns[0].audio)) <= 0.25
    assert wer("tell me a joke about cats", transcriber.transcribe(turns[1].audio)) <= 0.25
    # voxloop's endpoint comes ~0.5 s after the speech, the reference's after a full second.
    assert all(0.4 <= t.endpoint_at_s - t.end_s <= 0.7 for t in turns)
    ref = turns_in(samples, VadSettings(engine="webrtc"))
    assert all(t.endpoint_at_s - t.end_s > 1.0 for t in ref)


def test_the_end_of_a_pause_names_the_early_end_it_confirms(speech):
    """A speculative end and the final end of the same pause share an utterance id (the early
    answer is committed to that turn); a pause the user talks on after, and the next turn, get
    ids of their own."""
    first = load_audio(speech(["What is the capital"]))
    rest = load_audio(speech(["of France?", "Tell me a joke."]))
    first = first[: np.nonzero(np.abs(first) > 0.01)[0][-1] + 1]  # up to its last sound
    rest = rest[np.nonzero(np.abs(rest) > 0.01)[0][0] :]  # from its first
    short_pause = np.zeros(int(0.3 * 16000), np.float32)  # past the early end, short of the end
    endpointer = make_endpointer(VadSettings())
    blocks = ArraySource(np.concatenate([first, short_pause, rest])).iter_blocks()
    ends = [e for block in blocks for e in endpointer.feed(block) if isinstance(e, SpeechEnded)]
    finals = [e for e in ends if e.final]
    assert len(finals) == 2
    early = [e for e in ends if not e.final]
    for final in finals:  # each turn's end confirms the last early end before it, and only that
        before = [e for e in early if e.end_s <= final.end_s]
        assert before and before[-1].utterance == final.utterance
        assert all(e.utterance != final.utterance for e in early if e is not before[-1])
    assert len({e.utterance for e in ends}) == len(early)  # the pause talked on after is its own


def test_silence_and_noise_give_no_turn(transcriber):
    assert turns_in(np.zeros(16000 * 4, np.float32)) == []
    for level in (0.02, 0.2):
        for turn in turns_in(noise(4.0, level)):
            assert transcriber.transcribe(turn.audio) == ""


def test_a_click_is_not_a_turn():
    samples = np.zeros(16000 * 2, np.float32)
    samples[16000 : 16000 + 1600] = noise(0.1, 0.5)
    assert turns_in(samples) == []


@pytest.mark.parametrize("kind", ["8k", "44k-stereo-float", "mp3", "flac", "ogg"])
def test_input_formats_transcribe_alike(kind, speech, tmp_path, voxloop):
    text = "Please set a timer for ten minutes."
    mono = load_audio(speech([text]), target_rate=44100)
    path = {
        "8k": tmp_path / "a.wav",
        "44k-stereo-float": tmp_path / "b.wav",
        "mp3": tmp_path / "c.mp3",
        "flac": tmp_path / "d.flac",
        "ogg": tmp_path / "e.ogg",
    }[kind]
    if kind == "8k":
        sf.write(path, load_audio(speech([text]), target_rate=8000), 8000, subtype="PCM_16")
    elif kind == "44k-stereo-float":
        sf.write(path, np.stack([mono, mono * 0.8], axis=1), 44100, subtype="FLOAT")
    else:
        sf.write(path, mono, 44100)
    run = voxloop("transcribe", str(path))
    assert run.code == 0, run.err
    assert wer(text, run.out) <= 0.25, run.out


def test_short_window_stt_matches_the_30s_window(synthesizer, transcriber):
    """The short encoder windows (6 s, 8 s, 10 s) must not cost accuracy: compare with Whisper's
    own 30 s path."""
    from voxloop.audio.speech import spoken_turns
    from voxloop.settings import SttSettings
    from voxloop.stt.whisper import WhisperTranscriber

    full = WhisperTranscriber(SttSettings(window_s=30, mid_window_s=0, short_window_s=0))
    texts = [
        "Yes.",
        "No, thank you.",
        "What is the capital of France?",
        "Could you set a timer for ten minutes and remind me to check the oven?",
        "My name is Alice. What is my name?",
        "Tell me a fun fact about the moon, please.",
        "I would like to hear some quiet piano music while I read my book tonight.",
        "I want to go for a run in the park before work tomorrow. Should I bring a jacket, or is a sweater enough?",
        "My sister lives in California, three hours behind us. What time should I call her so that I do not wake her up?",
    ]
    fast_text, full_text = [], []
    for text in texts:
        audio = spoken_turns(synthesizer, [text], lead_s=0.2)
        fast_text.append(transcriber.transcribe(audio))
        full_text.append(full.transcribe(audio))
    assert wer(" ".join(full_text), " ".join(fast_text)) <= 0.05, (full_text, fast_text)
    assert wer(" ".join(texts), " ".join(fast_text)) <= 0.15


def test_transcribe_splits_a_mid_phrase_pause_the_way_chat_does(mid_phrase_pause):
    """The words at the pause after "I would like to" keep the utterance open, as in chat
    (tests/test_realtime.py), where a plain 0.6 s endpoint would split it in two."""
    from voxloop.app import transcribe
    from voxloop.settings import Settings

    heard = transcribe(Settings(), str(mid_phrase_pause))
    assert len(heard) == 1, [t.text for _, t in heard]
    assert wer("I would like to order a large pizza with mushrooms", heard[0][1].text) <= 0.25
    # The control: without the words steering the endpointer, the same pause splits it.
    plain = transcribe(Settings(vad=VadSettings(adaptive=False)), str(mid_phrase_pause))
    assert len(plain) == 2, [t.text for _, t in plain]


def test_an_interim_transcript_made_useless_is_dropped_after_the_encoder(transcriber, speech):
    """While an interim transcript runs the user pauses: the decoder is skipped so the
    transcript that matters starts sooner."""
    audio = load_audio(str(speech(["Please remind me to call my sister on Friday."])))
    asked: list[bool] = []

    def stop() -> bool:
        asked.append(True)
        return True

    assert transcriber.transcribe(audio, stop=stop) == ""
    assert asked
    assert "sister" in transcriber.transcribe(audio, stop=lambda: False).lower()


def _thread_states(pid: int) -> set[str]:
    """The scheduler state letter of each thread of process ``pid``, from /proc."""
    import os

    states = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        states.add(stat.rsplit(")", 1)[1].split()[0])
    return states


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE and /proc are Linux's")
def test_interim_transcripts_run_apart_at_the_lowest_priority_and_freeze_on_a_pause(speech):
    """Partials run in a child process whose threads (CTranslate2's included) are all under
    SCHED_IDLE; a pause freezes it at once, and the next partial still transcribes."""
    import os
    import threading
    import time

    from voxloop.settings import SttSettings
    from voxloop.stt.interim import InterimTranscriber

    ours = {tid: os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")}
    interim = InterimTranscriber(SttSettings())
    try:
        theirs = [os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{interim.pid}/task")]
        assert len(theirs) >= 2 and set(theirs) == {os.SCHED_IDLE}
        still = {
            tid: os.sched_getscheduler(int(tid)) for tid in ours if os.path.exists(f"/proc/self/task/{tid}")
        }
        assert still == {tid: ours[tid] for tid in still}  # voxloop's own threads untouched
        question = "Please remind me to call my sister on Friday."
        audio = load_audio(str(speech([question])))
        paused = threading.Event()
        running = interim.executor.submit(interim.transcribe, np.concatenate([audio] * 3), paused.is_set)
        time.sleep(0.05)
        paused.set()
        assert running.result(timeout=1) == ""
        # SIGSTOP lands on each thread the next time the kernel schedules it (at once on an idle
        # core, a little later under SCHED_IDLE when both cores are busy); until then a thread
        # may show "R", but it never runs user code again before it stops.
        deadline = time.monotonic() + 2.0
        while (states := _thread_states(interim.pid)) != {"T"} and time.monotonic() < deadline:
            time.sleep(0.01)
        assert states == {"T"}, states  # stopped: it takes no CPU while the turn is transcribed
        text = interim.executor.submit(interim.transcribe, audio).result(timeout=30)
        assert wer(question, text) <= 0.15, text
    finally:
        interim.close()
    assert interim._proc.poll() is not None


def test_short_answers_come_back_as_finished_sentences(synthesizer, transcriber):
    """On the short encoder window a short answer keeps its final punctuation and is heard
    once, so the endpointer ends the turn after the short pause ("Thanks Thanks" would keep
    it waiting for more)."""
    from voxloop.audio.speech import spoken_turns
    from voxloop.reply import sounds_finished

    for text in ("Good morning.", "Play some music.", "Thanks.", "Yes.", "Okay.", "Really?"):
        heard = transcriber.transcribe(spoken_turns(synthesizer, [text], lead_s=0.2))
        assert wer(text, heard) == 0 and sounds_finished(heard), (text, heard)
