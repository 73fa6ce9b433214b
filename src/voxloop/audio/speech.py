"""Spoken test audio made on the spot with voxloop's own TTS: turns of speech separated by pauses.

hibari leaves ~0.7 s between sentences, longer than people do within one turn, so each sentence
is trimmed to its voiced part and sentences are joined with a short natural gap; turns are
separated by a longer pause, the way a person waits for the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voxloop.audio.decode import STT_RATE, resample
from voxloop.tts import Synthesizer
from voxloop.tts.pacing import trim_silence


def spoken_turns(
    synthesizer: Synthesizer,
    turns: Sequence[str],
    sentence_gap_s: float = 0.25,
    turn_gap_s: float = 2.0,
    lead_s: float = 0.5,
    rate: int = STT_RATE,
) -> np.ndarray:
    """One recording of ``turns`` spoken in order, at ``rate`` (16 kHz mono float32)."""
    from hibari import Hibari

    src = synthesizer.sample_rate
    parts: list[np.ndarray] = [np.zeros(int(lead_s * src), np.float32)]
    for i, turn in enumerate(turns):
        if i:
            parts.append(np.zeros(int(turn_gap_s * src), np.float32))
        for j, sentence in enumerate(Hibari.split_sentences(turn)):
            if j:
                parts.append(np.zeros(int(sentence_gap_s * src), np.float32))
            parts.append(trim_silence(synthesizer.synthesize(sentence), src))
    parts.append(np.zeros(int(lead_s * src), np.float32))
    return resample(np.concatenate(parts), src, rate)
