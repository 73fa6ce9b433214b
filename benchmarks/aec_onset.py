"""Echo cancellers on a simulated room: how much echo they remove, whether what is left looks
like speech to the VAD, and how soon the user's voice shows through when the user talks over
voxloop (double-talk onset, which bounds how fast barge-in can be).

Why this exists: barge-in pauses playback on the first VAD step that hears the user in the
echo canceller's output (and cuts it on the next). With headphones that takes 130-150 ms from
the first sound of the user's voice; through WebRTC AEC3 it takes longer, because AEC3's
suppressor holds the user's first ~100-150 ms down while it decides whether the new sound is
echo. This script measures that for every canceller installed, next to the user's voice alone
(the floor any canceller can reach), so a new canceller or setting can be judged before it
goes into the pipeline.

Backends: ``webrtc`` (pywebrtc-audio, voxloop's default), ``livekit`` and ``speex`` (the
``speexaec`` package, built against Debian's libspeexdsp-dev) when they are installed. The room
is a 40 ms delay at a gain, over -60 dBFS hiss, optionally with a 250 ms reverberant tail.
The far end is hibari reading a weather report; the user (also hibari) says "Stop, stop.
Please tell me the time instead." starting at four different moments.

Run from the repository root::

    python benchmarks/aec_onset.py
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from voxloop.audio.aec import EchoCanceller, make_echo_canceller
from voxloop.audio.decode import resample
from voxloop.settings import TtsSettings
from voxloop.tts.hibari_tts import HibariSynthesizer
from voxloop.vad.endpointer import STEP, SileroVad

RATE = 16000
FAR_TEXT = (
    "Good morning. The weather today is sunny with a light breeze from the west. "
    "Tomorrow will bring some rain in the afternoon, so take an umbrella when you go out. "
    "I can also set timers, play music, and answer questions about almost anything."
)
NEAR_TEXT = "Stop, stop. Please tell me the time instead."
STARTS_S = (2.0, 3.0, 4.1, 5.3)  # when the user starts talking over the far end


def room(far: np.ndarray, gain: float, reverb: bool, delay_ms: int = 40) -> np.ndarray:
    """What the microphone hears of the speaker: late, scaled, optionally reverberant."""
    delay = delay_ms * RATE // 1000
    echo = np.zeros_like(far)
    echo[delay:] = gain * far[:-delay]
    if reverb:
        n = RATE // 4
        tail = np.random.default_rng(2).standard_normal(n) * np.exp(-np.arange(n) / (0.05 * RATE)) * 0.3
        tail[0] = 1.0
        echo = (np.convolve(echo, tail)[: len(far)] * 0.6).astype(np.float32)
    hiss = np.random.default_rng(1).standard_normal(len(far)).astype(np.float32) * 1e-3
    return echo + hiss


class SpeexAec:
    """Speex's MDF linear echo canceller (no residual suppressor), 10 ms frames, 200 ms tail."""

    kind = "speex"

    def __init__(self) -> None:
        self.reset()

    def process(self, near: np.ndarray, far: np.ndarray) -> np.ndarray:
        out = np.zeros_like(near)
        for i in range(0, len(near) - 159, 160):
            n16 = (np.clip(near[i : i + 160], -1, 1) * 32767).astype(np.int16)
            f16 = (np.clip(far[i : i + 160], -1, 1) * 32767).astype(np.int16)
            out[i : i + 160] = self._ec.process(n16, f16).astype(np.float32) / 32767
        return out

    def reset(self) -> None:
        import speexaec

        self._ec = speexaec.EchoCanceller(160, 3200, RATE)


def backends() -> dict[str, Callable[[], EchoCanceller | None]]:
    found: dict[str, Callable[[], EchoCanceller | None]] = {"none (user alone)": lambda: None}
    if importlib.util.find_spec("pywebrtc_audio"):
        found["webrtc"] = lambda: make_echo_canceller("webrtc")
    if importlib.util.find_spec("livekit") and importlib.util.find_spec("livekit.rtc"):
        found["livekit"] = lambda: make_echo_canceller("livekit")
    if importlib.util.find_spec("speexaec"):
        found["speex"] = SpeexAec
    return found


def cancel(aec: EchoCanceller, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
    """Block by block, as the microphone delivers it (512 samples; speex gets whole frames)."""
    block = 480 if isinstance(aec, SpeexAec) else 512
    n = len(mic) // block * block
    return np.concatenate([aec.process(mic[i : i + block], far[i : i + block]) for i in range(0, n, block)])


def probabilities(samples: np.ndarray) -> np.ndarray:
    vad = SileroVad()
    return np.array([vad.probability(samples[i : i + STEP]) for i in range(0, len(samples) - STEP + 1, STEP)])


def main() -> None:
    synthesizer = HibariSynthesizer(TtsSettings())
    far = resample(synthesizer.synthesize(FAR_TEXT), synthesizer.sample_rate, RATE)
    voice = resample(synthesizer.synthesize(NEAR_TEXT), synthesizer.sample_rate, RATE)
    onset_in_voice = int(np.flatnonzero(np.abs(voice) > 0.01)[0])
    print(
        "| room | canceller | echo removed | VAD speech steps, echo alone | user heard after, ms (4 onsets) |"
    )
    print("|---|---|---|---|---|")
    for gain, reverb in ((0.5, False), (0.5, True), (1.0, False), (1.0, True)):
        echo = room(far, gain, reverb)
        for name, make in backends().items():
            aec = make()
            if aec is None:  # the floor: the user's voice alone, no echo at all
                removed, false_steps = "-", "-"
                echo_speech = np.zeros(len(far) // STEP, bool)
            else:
                cleaned = cancel(aec, echo, far)
                skip = RATE  # the filters are still learning in the first second
                energy = float(np.sum(echo[skip : len(cleaned)] ** 2) / np.sum(cleaned[skip:] ** 2))
                removed = f"{10 * np.log10(energy):.1f} dB"
                echo_speech = probabilities(cleaned) >= 0.5
                false_steps = (
                    f"{int(np.sum(echo_speech[skip // STEP :]))} of {len(echo_speech) - skip // STEP}"
                )
            heard = []
            for start_s in STARTS_S:
                start = int(start_s * RATE)
                near = np.zeros_like(far)
                near[start : start + len(voice)] = voice[: len(far) - start]
                fresh = make()  # a canceller that has not heard this room yet
                out = near if fresh is None else cancel(fresh, echo + near, far)
                onset = start + onset_in_voice
                # The first step where the VAD hears speech that the echo alone did not give.
                speech = [
                    i
                    for i, p in enumerate(probabilities(out))
                    if p >= 0.5 and (i + 1) * STEP > onset and not echo_speech[i]
                ]
                heard.append(str(round(((speech[0] + 1) * STEP - onset) / 16)) if speech else "never")
            where = f"gain {gain}{', reverb' if reverb else ''}"
            print(f"| {where} | {name} | {removed} | {false_steps} | {', '.join(heard)} |", flush=True)


if __name__ == "__main__":
    main()
