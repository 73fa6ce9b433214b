"""Regenerate the mid-phrase pause set used by ``voxloop bench --endpointing`` (``benchmarks/pauses/``).

Why: a fast endpoint is only worth having if it does not cut people off. This set holds
utterances with pauses of 0.5-1.5 s *inside* a phrase ("I'd like to order, um, a large
pizza", "My number is zero one two, three four five six"), where a turn must not end, spoken by
several voices; the benchmark counts how many of those pauses ended the turn (false cut-offs).

How: each utterance is synthesized whole, with a comma where the speaker hesitates, so the
voice carries on across the pause as a person's does (a phrase synthesized on its own would end
with a sentence's falling tone, which no one uses mid-phrase). The silence the voice leaves at
each comma is then found (the longest quiet runs, as many as there are commas) and stretched to
the pause's length, drawn from 0.5-1.5 s with a fixed seed. Voices: hibari (voxloop's own TTS,
at three speeds), espeak-ng and festival (``make_quality_set.py``'s engines); each utterance is
spoken by two of them. ``manifest.json`` gives each recording's voiced start and end
(``turns``, one per recording) and the true start and end of each pause (``pauses``).

Needs what ``make_quality_set.py`` needs. Run from the repository root::

    python benchmarks/make_pause_set.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from make_quality_set import VOICES as QUALITY_VOICES
from make_quality_set import QualitySpeaker, QualityVoice
from make_set import RATE, VOICED

OUT_DIR = Path(__file__).resolve().parent / "pauses"
LEAD_S = 0.5  # silence before the utterance
TAIL_S = 1.5  # silence after it
PAUSE_S = (0.5, 1.5)  # the range a pause's length is drawn from
FRAME = RATE // 100  # 10 ms
MIN_GAP_S = 0.02  # quiet runs shorter than this are not where a voice paused
SEED = 0

VOICES: list[QualityVoice] = QUALITY_VOICES[:8]  # the quality set's first eight: three engines

# Each comma is a pause inside the phrase; the text ends where the turn does.
UTTERANCES: list[str] = [
    "I'd like to order, um, a large pizza with mushrooms.",
    "My number is zero one two, three four five six.",
    "Can you tell me, the weather for tomorrow?",
    "Set an alarm for, seven thirty tomorrow morning.",
    "Send a message to, my brother Tom.",
    "I want to book a table for, four people, at eight tonight.",
    "Remind me to buy, uh, milk and eggs on the way home.",
    "The code is four seven, nine two.",
    "How do I get to, the train station from here?",
    "Play something by, the Beatles.",
    "Turn off the lights in, the kitchen and the hall.",
    "I was wondering if, you could help me with something.",
    "What's the weather like in, um, Paris this weekend?",
    "Put some bread and, uh, apples on my shopping list.",
    "The meeting is on Tuesday, at three in the afternoon.",
    "Could you find me a recipe for, chicken soup?",
    "My flight leaves at, uh, six fifteen on Friday.",
    "Tell me a joke about, cats.",
    "How many, ounces are in a pound?",
    "Call my mother and, tell her I'm running late.",
]


def quiet_runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) samples of each quiet stretch between the first and last voiced frame."""
    frames = len(samples) // FRAME
    loud = np.abs(samples[: frames * FRAME]).reshape(frames, FRAME).max(axis=1) > VOICED
    voiced = np.flatnonzero(loud)
    runs: list[tuple[int, int]] = []
    start = None
    for i in range(int(voiced[0]), int(voiced[-1]) + 1):
        if not loud[i] and start is None:
            start = i
        elif loud[i] and start is not None:
            runs.append((start * FRAME, i * FRAME))
            start = None
    return runs


def comma_gaps(samples: np.ndarray, text: str) -> list[tuple[int, int]]:
    """Where the voice paused at each comma: of the quiet runs, in order, the ones that are
    longest and nearest where the commas should fall (their share of the text's letters into
    the voiced audio); a second off costs as much as a quarter second of quiet."""
    loud = np.flatnonzero(np.abs(samples) > VOICED)
    first, last = int(loud[0]), int(loud[-1])
    runs = [r for r in quiet_runs(samples) if r[1] - r[0] >= MIN_GAP_S * RATE]
    letters = [c for c in text if c.isalpha() or c == ","]
    shares = [(at - k) / (len(letters) - text.count(",")) for k, at in enumerate(
        i for i, c in enumerate(letters) if c == ",")]  # fmt: skip
    expected = [first + share * (last - first) for share in shares]

    def score(chosen: tuple[tuple[int, int], ...]) -> float:
        off = sum(abs((a + b) / 2 - e) for (a, b), e in zip(chosen, expected, strict=True))
        return sum(b - a for a, b in chosen) - 0.25 * off

    options = list(itertools.combinations(runs, len(expected)))  # combinations keep the order
    if not options:
        raise ValueError(f"cannot find {len(expected)} pause(s) in {text!r}: quiet runs {runs}")
    return list(max(options, key=score))


def with_pauses(
    samples: np.ndarray, text: str, lengths: list[float]
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The utterance with its comma silences stretched to ``lengths`` (seconds), and where each
    pause now lies (samples)."""
    parts: list[np.ndarray] = []
    placed: list[tuple[int, int]] = []
    position = 0
    for (start, end), length in zip(comma_gaps(samples, text), lengths, strict=True):
        parts.append(samples[position:start])
        at = sum(len(p) for p in parts)
        parts.append(np.zeros(int(length * RATE), np.float32))
        placed.append((at, at + len(parts[-1])))
        position = end
    parts.append(samples[position:])
    return np.concatenate(parts), placed


def voiced_bounds(samples: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(samples) > VOICED)
    return int(loud[0]), int(loud[-1]) + 1


FILLERS = {"um", "uh"}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS = {w: str(i) for i, w in enumerate(NUMBERS)}


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c in " '").split()


def heard_up_to(stt: Any, speech: np.ndarray, pauses: list[tuple[int, int]], text: str) -> list[str]:
    """Why each pause is not where its comma is, if tiny.en hears the audio before it end with
    another word than the one before the comma (fillers aside: Whisper drops them)."""
    problems = []
    for k, (start, _) in enumerate(pauses):
        before = [w for w in _words(",".join(text.split(",")[: k + 1])) if w not in FILLERS]
        heard = _words(stt.transcribe(speech[: start + int(0.2 * RATE)]))
        want = before[-1]
        heard = [w for w in heard if w not in FILLERS]
        ok = bool(heard) and (heard[-1].endswith(DIGITS[want]) if want in DIGITS else heard[-1] == want)
        if not ok:
            problems.append(f"pause {k + 1}: wanted ...{want!r}, heard {' '.join(heard)!r}")
    return problems


def build(out: Path) -> list[dict[str, object]]:
    from voxloop.settings import SttSettings
    from voxloop.stt.whisper import WhisperTranscriber

    stt = WhisperTranscriber(SttSettings())
    rng = np.random.default_rng(SEED)
    recordings: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        speaker = QualitySpeaker(Path(tmp))
        for n, text in enumerate(UTTERANCES):
            # Two voices per utterance, taking turns through the list; a voice whose pause
            # cannot be placed at the comma (it ran the words together) gives way to the next.
            taken = 0
            for k in range(len(VOICES)):
                voice = VOICES[(2 * n + k) % len(VOICES)]
                lengths = [round(float(rng.uniform(*PAUSE_S)), 2) for _ in range(text.count(","))]
                try:
                    speech, pauses = with_pauses(speaker.sentence(voice, text), text, lengths)
                    problems = heard_up_to(stt, speech, pauses, text)
                except ValueError as exc:
                    problems = [str(exc)]
                if problems:
                    print(f"  skipped {voice.label}: {'; '.join(problems)}")
                    continue
                recordings.append(_write(out, len(recordings) + 1, voice, text, speech, pauses))
                print(f"{recordings[-1]['file']}: {voice.label:36s} pauses {lengths}  {text}")
                taken += 1
                if taken == 2:
                    break
            else:
                raise SystemExit(f"fewer than two voices could say {text!r} with its pauses")
    return recordings


def _write(
    out: Path, n: int, voice: QualityVoice, text: str, speech: np.ndarray, pauses: list[tuple[int, int]]
) -> dict[str, object]:
    lead = np.zeros(int(LEAD_S * RATE), np.float32)
    samples = np.concatenate([lead, speech, np.zeros(int(TAIL_S * RATE), np.float32)])
    first, last = voiced_bounds(speech)
    name = f"p{n:02d}.flac"
    sf.write(out / name, np.clip(samples, -1.0, 1.0), RATE, subtype="PCM_16")
    words = [w.strip(",") for w in text.split(",")]
    return {
        "file": name,
        "voice": voice.label,
        "text": text,
        "turns": [
            {
                "text": text.replace(",", ""),
                "start_s": round((len(lead) + first) / RATE, 3),
                "end_s": round((len(lead) + last) / RATE, 3),
            }
        ],
        "pauses": [
            {
                "after": " ".join(words[: i + 1]).strip(),
                "start_s": round((len(lead) + a) / RATE, 3),
                "end_s": round((len(lead) + b) / RATE, 3),
            }
            for i, (a, b) in enumerate(pauses)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    recordings = build(args.out)
    manifest = {"sample_rate": RATE, "recordings": recordings}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    pauses = sum(len(r["pauses"]) for r in recordings)  # type: ignore[arg-type]
    print(f"{len(recordings)} recordings, {pauses} pauses")


if __name__ == "__main__":
    main()
