"""Regenerate the spoken benchmark set used by ``voxloop bench`` (``benchmarks/set/``).

Why a generated, shipped set: the latency comparison against the reference pipeline (webrtcvad
mode 3, 1.0 s of silence, utterances under 2.0 s of voiced audio dropped) must run offline and
give the same numbers on every machine, so it needs fixed recordings whose turn boundaries are
known exactly. Recording people would not give exact boundaries, and synthesizing on the fly
would tie the numbers to the installed TTS version. This script is kept so the set can be
remade or extended; its output is committed.

Each recording is one conversation by one voice: voxloop's own TTS (hibari "heart", the only
voice available offline, at several speeds) or Debian's ``espeak-ng`` (other voices, so the set
is not tuned to one synthesizer). Turns range from one word ("Yes.") to two sentences of 5-8 s,
because the reference drops short turns and endpoints long ones late. Each synthesized sentence
is trimmed to its voiced part; sentences of one turn are joined by a natural 0.25 s gap; turns
are separated by 4.0 s of silence, long enough for even a slow pipeline to finish answering
before the next turn starts. ``manifest.json`` gives the true start and end of each turn's
voiced speech, from the sample positions it was placed at.

Run from the repository root::

    python benchmarks/make_set.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from voxloop.audio.decode import STT_RATE, load_audio, resample
from voxloop.audio.speech import trim_silence
from voxloop.settings import TtsSettings
from voxloop.tts.hibari_tts import HibariSynthesizer

OUT_DIR = Path(__file__).resolve().parent / "set"
RATE = STT_RATE  # 16 kHz mono, what voxloop and the reference both listen at
LEAD_S = 0.5  # silence before the first turn
TAIL_S = 2.0  # silence after the last turn
TURN_GAP_S = 4.0  # silence between turns: the pipeline answers in it
SENTENCE_GAP_S = 0.25  # silence between sentences of one turn
PEAK = 0.5  # every sentence is scaled to this peak, so voices are equally loud
VOICED = 0.01  # |sample| above this counts as voiced (trim_silence's threshold)
SEED = 0  # hibari's noise seed and the optional noise's


@dataclass(frozen=True)
class Voice:
    """A speaker: hibari at a speed, or an espeak-ng voice+variant at a rate in words/minute."""

    engine: str  # "hibari" or "espeak-ng"
    name: str  # hibari voice, or espeak-ng voice such as "en-us+m3"
    speed: float  # hibari speed factor, or espeak-ng words per minute

    @property
    def label(self) -> str:
        if self.engine == "hibari":
            return f"hibari {self.name} {self.speed}x"
        return f"espeak-ng {self.name} {int(self.speed)} wpm"


# One conversation per recording: each turn is a tuple of sentences, spoken by one voice.
CONVERSATIONS: list[tuple[Voice, list[tuple[str, ...]]]] = [
    (
        Voice("hibari", "heart", 1.0),
        [
            ("What time is it?",),
            ("Can you set a kitchen timer for twelve minutes, please?",),
            ("Okay.",),
            (
                "I am making pasta for dinner tonight for four people, and the water is already boiling.",
                "How long should the noodles cook before I drain them?",
            ),
        ],
    ),
    (
        Voice("espeak-ng", "en-us+m3", 140),
        [
            ("What is my name?",),
            ("My name is David and I live in Boston.",),
            ("No.",),
            (
                "I want to go for a run in the park before work tomorrow.",
                "Should I bring a jacket, or is a sweater enough?",
            ),
        ],
    ),
    (
        Voice("hibari", "heart", 0.9),
        [
            ("Hello, are you there?",),
            ("Please remind me to call my sister on Friday.",),
            ("Yes.",),
            (
                "My sister lives in California, three hours behind us.",
                "What time should I call her so that I do not wake her up?",
            ),
        ],
    ),
    (
        Voice("espeak-ng", "en-gb+f2", 150),
        [
            ("Good morning.",),
            ("How many days are left until the end of the month?",),
            ("Thanks.",),
            (
                "Tell me a short story about a cat who learns to swim.",
                "Make it funny, and keep it under a minute please.",
            ),
        ],
    ),
    (
        Voice("hibari", "heart", 1.15),
        [
            ("Play some music.",),
            ("Something relaxing, maybe piano or soft jazz.",),
            ("Louder, please.",),
            (
                "The neighbors are having a loud party next door and I can barely hear the song.",
                "Can you turn it up a little more, maybe to seventy percent?",
            ),
        ],
    ),
    (
        Voice("espeak-ng", "en-us+f4", 150),
        [
            ("What is the capital of Australia?",),
            ("Really?",),
            (
                "I always thought it was the biggest city in the whole country.",
                "Why did they build a new capital instead?",
            ),
            ("How long is the flight from London?",),
        ],
    ),
]


class Speaker:
    """Synthesizes one sentence at 16 kHz with a given voice; hibari is loaded once per speed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._hibari: dict[tuple[str, float], HibariSynthesizer] = {}

    def _hibari_sentence(self, voice: Voice, text: str) -> np.ndarray:
        key = (voice.name, voice.speed)
        if key not in self._hibari:
            self._hibari[key] = HibariSynthesizer(TtsSettings(voice=voice.name, speed=voice.speed))
        synthesizer = self._hibari[key]
        # hibari adds random noise to its output; a fixed seed makes the set bit-identical on every
        # run, so regenerating it does not churn the committed WAVs (synthesize() takes no seed).
        samples = np.asarray(synthesizer.tts(text, speed=voice.speed, seed=SEED), dtype=np.float32)
        return resample(samples, synthesizer.sample_rate, RATE)

    def _espeak_sentence(self, voice: Voice, text: str) -> np.ndarray:
        wav = self.workdir / "espeak.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice.name, "-s", str(int(voice.speed)), "-w", str(wav), text],
            check=True,
        )
        return load_audio(wav, target_rate=RATE)

    def sentence(self, voice: Voice, text: str) -> np.ndarray:
        """The sentence's voiced part (with trim_silence's small margin), peak-normalized."""
        if voice.engine == "hibari":
            samples = self._hibari_sentence(voice, text)
        elif voice.engine == "espeak-ng":
            samples = self._espeak_sentence(voice, text)
        else:
            raise ValueError(f"unknown TTS engine {voice.engine!r}")
        samples = samples * (PEAK / float(np.max(np.abs(samples))))
        return trim_silence(samples.astype(np.float32), RATE, threshold=VOICED)


def voiced_bounds(samples: np.ndarray) -> tuple[int, int]:
    """First voiced sample and one past the last voiced sample."""
    loud = np.flatnonzero(np.abs(samples) > VOICED)
    return int(loud[0]), int(loud[-1]) + 1


def build_recording(
    speaker: Speaker,
    voice: Voice,
    turns: list[tuple[str, ...]],
    lead_s: float = LEAD_S,
    gap_s: float = TURN_GAP_S,
    tail_s: float = TAIL_S,
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """One conversation at 16 kHz and, for each turn, its text and voiced start/end in seconds."""
    parts: list[np.ndarray] = [np.zeros(int(lead_s * RATE), np.float32)]
    position = len(parts[0])
    placed: list[dict[str, object]] = []
    for i, sentences in enumerate(turns):
        if i:
            parts.append(np.zeros(int(gap_s * RATE), np.float32))
            position += len(parts[-1])
        pieces: list[np.ndarray] = []
        for j, text in enumerate(sentences):
            if j:
                pieces.append(np.zeros(int(SENTENCE_GAP_S * RATE), np.float32))
            pieces.append(speaker.sentence(voice, text))
        turn = np.concatenate(pieces)
        first, last = voiced_bounds(turn)
        placed.append(
            {
                "text": " ".join(sentences),
                "start_s": round((position + first) / RATE, 3),
                "end_s": round((position + last) / RATE, 3),
            }
        )
        parts.append(turn)
        position += len(turn)
    parts.append(np.zeros(int(tail_s * RATE), np.float32))
    return np.concatenate(parts), placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="std of Gaussian noise added over each recording (default 0: digital silence, "
        "which also keeps the committed files small)",
    )
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    recordings: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        speaker = Speaker(Path(tmp))
        for n, (voice, turns) in enumerate(CONVERSATIONS, start=1):
            samples, placed = build_recording(speaker, voice, turns)
            if args.noise > 0:
                samples = samples + rng.normal(0.0, args.noise, len(samples)).astype(np.float32)
            name = f"conv-{n}.flac"  # lossless, a quarter of the WAV's size in the repository
            sf.write(args.out / name, np.clip(samples, -1.0, 1.0), RATE, subtype="PCM_16")
            recordings.append({"file": name, "voice": voice.label, "turns": placed})
            print(f"{name}: {len(turns)} turns, {len(samples) / RATE:.1f} s, {voice.label}")
    manifest = {"sample_rate": RATE, "recordings": recordings}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
