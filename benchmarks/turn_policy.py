"""What the endpointer knows at each pause, and how a rule for the endpoint wait would fare.

Why: ``voxloop bench --endpointing`` plays every recording in real time, twice: ~15 minutes
for one set of thresholds. The wait rule itself (``SileroEndpointer.wait_ms``) is a function
of three things known at each pause: how long the pause lasts, what the turn model says and
what the words say, each arriving some milliseconds into it. This script measures those once
per pause (the real Silero endpointer, the real turn model, the real Whisper), then scores any
rule on them in milliseconds, so the thresholds are chosen on data; the chosen ones are then
checked with ``voxloop bench --endpointing`` in real time.

What it scores, per rule:
- finished turns (``benchmarks/set`` and the quality set's questions, people's recordings
  among them): the endpoint wait at their true end (p50 / p95), and how many ended early in a
  gap inside the turn (split);
- mid-phrase pauses (``benchmarks/pauses``, 0.5-1.5 s): how many ended the turn (false
  cut-offs).

Run from the repository root (a minute or two on 2 cores)::

    python benchmarks/turn_policy.py [--json pauses.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.audio.decode import STT_RATE, load_audio
from voxloop.events import SpeechEnded, SpeechStarted
from voxloop.reply import sounds_finished
from voxloop.settings import BENCHMARKS, Settings
from voxloop.stt.whisper import WhisperTranscriber
from voxloop.vad import make_endpointer
from voxloop.vad.turn import shared_turn_model, words_finished

SPEC_MS = 32  # the speculative end comes on the first silent step
NEVER = float("inf")
EARLY_S, LATE_S = 0.3, 0.6  # a VAD end this near a true end belongs to it (as the bench)


@dataclass
class Pause:
    source: str  # set | quality | human | pauses
    recording: str
    voice: str
    kind: str  # end (a turn's true end) | designed (a mid-phrase pause) | gap (any other)
    end_s: float
    gap_ms: float  # silence until the voice resumed (inf: the turn's end)
    p: float  # the turn model's probability
    words: str
    check_ms: float
    stt_ms: float


def _pauses_of(audio: np.ndarray, settings: Settings) -> list[tuple[SpeechEnded, float]]:
    """Every speculative end with the silence that followed it (until the voice resumed)."""
    vad = replace(settings.vad, adaptive=False, end_silence_ms=3000, turn_model=False)
    endpointer = make_endpointer(vad, STT_RATE)
    out: list[tuple[SpeechEnded, float]] = []
    pending: SpeechEnded | None = None
    padded = np.concatenate([audio, np.zeros(int(3.5 * STT_RATE), np.float32)])
    for i in range(0, len(padded), 512):
        for event in endpointer.feed(padded[i : i + 512]):
            if isinstance(event, SpeechEnded) and not event.final:
                pending = event
            elif isinstance(event, SpeechStarted) and event.resumed and pending is not None:
                out.append((pending, (event.at_s - pending.end_s) * 1000))
                pending = None
            elif isinstance(event, SpeechEnded) and event.final and pending is not None:
                out.append((pending, NEVER))
                pending = None
    return out


def _sources() -> list[tuple[str, Path, dict[str, Any]]]:
    found: list[tuple[str, Path, dict[str, Any]]] = []
    for source, folder in (("set", BENCHMARKS / "set"), ("pauses", BENCHMARKS / "pauses")):
        for rec in json.loads((folder / "manifest.json").read_text())["recordings"]:
            found.append((source, folder, rec))
    quality = BENCHMARKS / "quality"
    manifest = json.loads((quality / "manifest.json").read_text())
    found += [("quality", quality, rec) for rec in manifest["recordings"]]
    found += [("human", quality, {**rec, "voice": "human"}) for rec in manifest["human"]]
    return found


def measure(say: Callable[[str], None]) -> list[Pause]:
    settings = Settings()
    model = shared_turn_model()
    if model is None:
        sys.exit("The turn model is not installed: pip install --no-deps pipecat-ai==1.14.0")
    stt = WhisperTranscriber(settings.stt)
    stt.warm_up()
    pauses: list[Pause] = []
    sources = _sources()
    for n, (source, folder, rec) in enumerate(sources, 1):
        say(f"{n}/{len(sources)} {source} {rec['file']}")
        audio = load_audio(folder / rec["file"])
        turns = rec.get("turns", [])
        designed = rec.get("pauses", [])
        for event, gap_ms in _pauses_of(audio, settings):
            if gap_ms == NEVER and any(
                t["end_s"] - EARLY_S <= event.end_s <= t["end_s"] + LATE_S for t in turns
            ):
                kind = "end"
            elif any(d["start_s"] - EARLY_S <= event.end_s <= d["end_s"] for d in designed):
                kind = "designed"
            elif gap_ms == NEVER:
                kind = "end"  # an utterance the manifest does not name (quality: its turns are named)
            else:
                kind = "gap"
            t0 = time.perf_counter()
            p = model.probability(event.audio)
            check_ms = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            words = stt.transcribe(event.audio)
            stt_ms = (time.perf_counter() - t0) * 1000
            pauses.append(
                Pause(
                    source,
                    rec["file"],
                    rec.get("voice", ""),
                    kind,
                    event.end_s,
                    gap_ms,
                    p,
                    words,
                    check_ms,
                    stt_ms,
                )
            )
    return pauses


# -- rules ----------------------------------------------------------------------------------------
Rule = Callable[[float | None, str | None], float]  # (p or None, words or None) -> wait (ms)


def words_only(complete: float = 400, incomplete: float = 900, unknown: float = 600) -> Rule:
    def rule(p: float | None, words: str | None) -> float:
        if words is None:
            return unknown
        return complete if sounds_finished(words) else incomplete

    return rule


def today(threshold: float = 0.97, sure: float = 200, unsure: float = 1600, incomplete: float = 1800) -> Rule:
    """``SileroEndpointer.wait_ms`` as it is (the words read strictly, as the pipeline does
    with the turn model)."""
    fallback = words_only()

    def rule(p: float | None, words: str | None) -> float:
        finished = None if words is None else words_finished(words)
        if p is None:
            return fallback(None, words)
        if p >= threshold:
            return incomplete if finished is False else sure
        if p >= 0.5 and finished:
            return unsure
        return incomplete

    return rule


def ended_at(rule: Rule, pause: Pause, lag: float = 1.0) -> float:
    """The silence (ms) after which ``rule`` ends this pause (inf: it does not, within the gap).
    The model's answer and the words arrive at the first silent step plus their compute time
    (times ``lag``, for a busier machine)."""
    arrive_p = SPEC_MS + pause.check_ms * lag
    arrive_w = SPEC_MS + pause.stt_ms * lag
    moments = sorted({0.0, arrive_p, arrive_w})
    for i, at in enumerate(moments):
        known_p = pause.p if at >= arrive_p else None
        known_w = pause.words if at >= arrive_w else None
        wait = max(rule(known_p, known_w), at)
        until = moments[i + 1] if i + 1 < len(moments) else NEVER
        if wait < until and wait < pause.gap_ms:
            return wait
    return NEVER


def score(rule: Rule, pauses: list[Pause], lag: float = 1.0) -> dict[str, Any]:
    ends = [ended_at(rule, p, lag) for p in pauses if p.kind == "end"]
    designed = [p for p in pauses if p.kind == "designed"]
    cut = [p for p in designed if ended_at(rule, p, lag) < NEVER]
    gaps = [p for p in pauses if p.kind == "gap"]
    split = [p for p in gaps if ended_at(rule, p, lag) < NEVER]
    finite = sorted(x for x in ends if x < NEVER)

    def pct(q: float) -> float:
        return finite[min(len(finite) - 1, int(q * len(finite)))] if finite else float("nan")

    return {
        "wait_p50": statistics.median(finite) if finite else float("nan"),
        "wait_p95": pct(0.95),
        "ends": len(ends),
        "cut": len(cut),
        "designed": len(designed),
        "cut_rate": len(cut) / len(designed) if designed else float("nan"),
        "split": len(split),
        "gaps": len(gaps),
        "cut_at": [f"{p.recording} {p.voice}: {p.words!r} p={p.p:.2f} gap={p.gap_ms:.0f}" for p in cut],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="the measured pauses (read if it exists, else written)")
    args = parser.parse_args()
    if args.json is not None and args.json.is_file():
        pauses = [Pause(**x) for x in json.loads(args.json.read_text())]
    else:
        pauses = measure(lambda line: print(line, file=sys.stderr))
        if args.json is not None:
            args.json.write_text(json.dumps([asdict(p) for p in pauses], indent=1))
    rules: dict[str, Rule] = {
        "silence + words (today's default)": words_only(),
        "turn model (today's thresholds)": today(),
    }
    for name, rule in rules.items():
        s = score(rule, pauses)
        print(
            f"{name}: wait p50 {s['wait_p50']:.0f} / p95 {s['wait_p95']:.0f} ms over {s['ends']} ends; "
            f"cut {s['cut']} of {s['designed']} ({100 * s['cut_rate']:.1f}%); split {s['split']} of {s['gaps']} gaps"
        )


if __name__ == "__main__":
    main()
