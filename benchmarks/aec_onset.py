"""Echo cancellers on a simulated room: how much echo they remove, whether what is left looks
like speech to the endpointer, and how soon the user's voice is heard when the user talks over
voxloop (double-talk onset, which bounds how fast barge-in can be).

Why this exists: barge-in pauses playback on the first VAD step that hears the user in the
echo canceller's output (and cuts it on the next). With headphones that takes 130-150 ms from
the first sound of the user's voice; through an echo canceller it can take longer, for two
reasons this script tells apart:

* the canceller's suppressor holds the user's first 100-150 ms down while it decides whether
  the new sound is echo (AEC3 does this at the onset of double talk);
* Silero's recurrent memory, after seconds of what the canceller leaves of voxloop's voice,
  answers a new voice slowly (0.2-0.4 where a fresh state gives 0.6-0.85). The endpointer
  clears it after ``[vad] refresh_ms`` of quiet between turns; the ``no refresh`` rows show
  what that buys.

The user talks over voxloop's *second* reply, so the canceller has already learned the room on
the first (a fresh canceller at every onset would flatter it), at eight moments.

Backends: ``webrtc`` (pywebrtc-audio, voxloop's default), ``livekit`` and ``speex`` (the
``speexaec`` package, built against Debian's libspeexdsp-dev) when they are installed. Rooms:
a 40 ms delay at a gain over -60 dBFS hiss, dry or with a diffuse reverberant tail (RT60
~0.35 s) at a direct-to-reverberant ratio of 0 or -6 dB, the echo's energy always gain^2 times
the reply's. The far end is hibari reading a weather report; the user (also hibari) says
"Stop, stop. Please tell me the time instead."

Run from the repository root::

    python benchmarks/aec_onset.py
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np

from voxloop.audio.aec import EchoCanceller, make_echo_canceller
from voxloop.audio.decode import resample
from voxloop.settings import TtsSettings, VadSettings
from voxloop.tts.hibari_tts import HibariSynthesizer
from voxloop.vad.endpointer import STEP, SileroEndpointer

RATE = 16000
FAR_TEXT = (
    "Good morning. The weather today is sunny with a light breeze from the west. "
    "Tomorrow will bring some rain in the afternoon, so take an umbrella when you go out. "
    "I can also set timers, play music, and answer questions about almost anything."
)
NEAR_TEXT = "Stop, stop. Please tell me the time instead."


STARTS_S = (0.5, 1.0, 2.0, 3.0, 4.1, 5.3, 6.5, 7.7)  # into the second reply
ROOMS = ((0.5, None), (1.0, None), (0.5, 0.0), (1.0, 0.0), (1.0, -6.0))  # (gain, DRR dB or dry)


def room(far: np.ndarray, gain: float, drr_db: float | None, delay_ms: int = 40) -> np.ndarray:
    """What the microphone hears of the speaker: late, through the room, over hiss."""
    delay = delay_ms * RATE // 1000
    ir = np.array([1.0])
    if drr_db is not None:  # a direct path, then a diffuse tail decaying with tau = 50 ms
        n = RATE // 4
        tail = np.random.default_rng(2).standard_normal(n) * np.exp(-np.arange(n) / (0.05 * RATE))
        tail[0] = 0.0
        tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))
        tail[0] = 1.0
        ir = tail / np.sqrt(np.sum(tail**2))
    echo = np.zeros_like(far)
    echo[delay:] = np.convolve(far, gain * ir)[: len(far) - delay]
    hiss = np.random.default_rng(1).standard_normal(len(far)).astype(np.float32) * 1e-3
    return (echo + hiss).astype(np.float32)


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
    found: dict[str, Callable[[], EchoCanceller | None]] = {"headphones (user alone)": lambda: None}
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


def hearing(samples: np.ndarray, refresh_ms: int) -> np.ndarray:
    """Per VAD step: does the endpointer hear a voice (what pauses the reply)? voxloop is
    speaking all along (also in the floor's row: the user talks over it in headphones)."""
    endpointer = SileroEndpointer(VadSettings(refresh_ms=refresh_ms))
    endpointer.playback(True)
    heard = []
    for i in range(0, len(samples) - STEP + 1, STEP):
        endpointer.feed(samples[i : i + STEP])
        heard.append(endpointer.hearing)
    return np.array(heard)


def main() -> None:
    synthesizer = HibariSynthesizer(TtsSettings(seed=0))
    reply = resample(synthesizer.synthesize(FAR_TEXT), synthesizer.sample_rate, RATE)
    voice = resample(synthesizer.synthesize(NEAR_TEXT), synthesizer.sample_rate, RATE)
    onset_in_voice = int(np.flatnonzero(np.abs(voice) > 0.01)[0])
    # A first reply, half a second for the user's next turn, then the reply the user talks over.
    far = np.concatenate([reply, np.zeros(RATE // 2, np.float32), reply])
    second = len(reply) + RATE // 2
    refreshes = {"": VadSettings().refresh_ms, ", no refresh": 0}
    print(
        "| room | canceller | echo removed | steps heard in echo alone | user heard after, ms (8 onsets) | median |"
    )
    print("|---|---|---|---|---|---|")
    for gain, drr in ROOMS:
        echo = room(far, gain, drr)
        for name, make in backends().items():
            aec = make()
            cleaned = None if aec is None else cancel(aec, echo, far)
            mixes = []
            for start_s in STARTS_S:
                start = second + int(start_s * RATE)
                near = np.zeros_like(far)
                n = min(len(voice), len(far) - start)
                near[start : start + n] = voice[:n]
                fresh = make()  # the same canceller again, on echo and user together
                mixes.append(
                    (start + onset_in_voice, near if fresh is None else cancel(fresh, echo + near, far))
                )
            for label, refresh_ms in refreshes.items():
                if cleaned is None:  # the floor: the user's voice alone, no echo at all
                    removed, false_steps = "-", "-"
                    echo_heard = np.zeros(len(far) // STEP, bool)
                else:
                    skip = RATE  # the filters are still learning in the first second
                    energy = float(np.sum(echo[skip : len(cleaned)] ** 2) / np.sum(cleaned[skip:] ** 2))
                    removed = f"{10 * np.log10(energy):.1f} dB"
                    echo_heard = hearing(cleaned, refresh_ms)
                    false_steps = (
                        f"{int(np.sum(echo_heard[skip // STEP :]))} of {len(echo_heard) - skip // STEP}"
                    )
                heard = []
                for onset, out in mixes:
                    steps = hearing(out, refresh_ms)
                    # The first step that hears a voice the echo alone did not give.
                    hits = [
                        i for i, h in enumerate(steps) if h and (i + 1) * STEP > onset and not echo_heard[i]
                    ]
                    heard.append(round(((hits[0] + 1) * STEP - onset) / 16) if hits else None)
                known = [h for h in heard if h is not None]
                median = f"{np.median(known):.0f}" if len(known) == len(heard) else "-"
                where = f"gain {gain}, " + ("dry" if drr is None else f"DRR {drr:+.0f} dB")
                shown = ", ".join("never" if h is None else str(h) for h in heard)
                print(
                    f"| {where} | {name}{label} | {removed} | {false_steps} | {shown} | {median} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
