"""`voxloop bench --interruptions`: how often a sound over a reply is judged right.

While voxloop speaks, voice over the reply pauses it at once; then a cough or a listener's
"okay" must let it go on where it was, and a real interruption must cut it. Each case plays a
scripted reply (no LLM) into a simulated room, in real time, and ~2 s into it the sound:

- ``cough/noise``: slices of 100-250 ms of a hum or of speech, a click, a breath-like burst;
  right when the reply goes on (resumed if it was held), is never flushed and plays to its end;
- ``backchannel``: "Okay.", "Yeah.", "Mm-hm.", "Right.", "I see.", "Uh-huh."; right as above;
- ``interruption``: "Stop.", "Wait, stop.", ...; right when the reply is flushed, an
  ``Interrupted`` event is emitted, and the new turn's transcript holds every word said.

Rooms: headphones (no echo) and loudspeakers (the reply comes back at half level 40 ms later,
through the WebRTC echo canceller). Voices: hibari at several speeds and seeds, and espeak-ng
and festival where they are installed (as ``benchmarks/make_quality_set.py`` uses them).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from voxloop.audio.aec import make_echo_canceller
from voxloop.audio.decode import STT_RATE, load_audio, resample
from voxloop.audio.sources import BLOCK
from voxloop.audio.speech import trim_silence
from voxloop.bench import percentile
from voxloop.bench.score import normalize
from voxloop.events import AudioChunk, Interrupted, Transcript
from voxloop.pipeline import Assistant
from voxloop.printer import CollectingPrinter
from voxloop.settings import Settings, TtsSettings
from voxloop.stt.whisper import WhisperTranscriber
from voxloop.testing import EchoSource, ScriptedChat, VirtualSpeaker
from voxloop.tts.hibari_tts import HibariSynthesizer

KINDS = ("cough/noise", "backchannel", "interruption")
BACKCHANNELS = ("Okay.", "Yeah.", "Mm-hm.", "Right.", "I see.", "Uh-huh.")
INTERRUPTIONS = (
    "Stop.",
    "Wait, stop.",
    "Hold on, what about cats?",
    "No, tell me about dogs instead.",
    "Sorry, can I ask something?",
)
REQUEST = "Tell me a story about a dragon."
REPLY = (
    "Once upon a time, a small dragon lived on a quiet hill. "
    "Every morning she flew over the village."
)  # ~5.7 s of speech: it is still playing well after the sound
ANSWER = "Sure."
INTO_S = 2.0  # the sound starts this far into the reply
SETTLE_S = 8.0  # after the sound, the longest a case waits for its outcome
PEAK = 0.5  # every voice is scaled to this peak (as benchmarks/make_set.py does)
VOICED = 0.01


@dataclass(frozen=True)
class Room:
    name: str
    gain: float  # the reply's echo in the microphone
    aec: bool  # through the WebRTC echo canceller


ROOMS = (Room("headphones", 0.0, False), Room("speakers+aec", 0.5, True))
ECHO_DELAY_MS = 40.0


@dataclass(frozen=True)
class Voice:
    """hibari (``speed``: pace, ``seed``: its noise), espeak-ng (``speed``: words a minute) or
    festival (``speed``: rate factor)."""

    engine: str
    name: str
    speed: float = 1.0
    seed: int = 0

    @property
    def label(self) -> str:
        if self.engine == "hibari":
            return f"hibari {self.speed}x seed {self.seed}"
        if self.engine == "espeak-ng":
            return f"espeak-ng {self.name} {int(self.speed)} wpm"
        return f"festival {self.name} {self.speed}x"


# Each engine's phrases take its voices in turn.
VOICES = {
    "hibari": (
        Voice("hibari", "heart", 1.0, 0),
        Voice("hibari", "heart", 0.9, 1),
        Voice("hibari", "heart", 1.1, 2),
    ),
    "espeak-ng": (Voice("espeak-ng", "en-us+m3", 150), Voice("espeak-ng", "en-gb+f2", 140)),
    "festival": (Voice("festival", "kal_diphone"), Voice("festival", "cmu_us_slt_arctic_hts")),
}
ENGINES = tuple(VOICES)


def installed(engine: str) -> bool:
    return engine == "hibari" or shutil.which("text2wave" if engine == "festival" else engine) is not None


class Speakers:
    """Says a phrase in a voice at 16 kHz: its voiced part, at the same peak for every voice."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._hibari: dict[Voice, HibariSynthesizer] = {}

    def _raw(self, voice: Voice, text: str) -> np.ndarray:
        if voice.engine == "hibari":
            if voice not in self._hibari:
                tts = TtsSettings(voice=voice.name, speed=voice.speed, seed=voice.seed, threads=1)
                self._hibari[voice] = HibariSynthesizer(tts)
            synth = self._hibari[voice]
            return resample(synth.synthesize(text), synth.sample_rate, STT_RATE)
        wav, txt = self.workdir / "say.wav", self.workdir / "say.txt"
        if voice.engine == "espeak-ng":
            command = ["espeak-ng", "-v", voice.name, "-s", str(int(voice.speed)), "-w", str(wav), text]
        else:  # festival's text2wave, as benchmarks/make_quality_set.py runs it
            txt.write_text(text + "\n")
            if voice.name.endswith("_hts"):
                pace = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {voice.speed}))))'
            else:
                pace = f"(Parameter.set 'Duration_Stretch {1.0 / voice.speed:.4f})"
            command = ["text2wave", str(txt), "-o", str(wav), "-eval", f"(voice_{voice.name})", "-eval", pace]
        subprocess.run(command, check=True, capture_output=True)
        return load_audio(wav)

    def say(self, voice: Voice, text: str) -> np.ndarray:
        samples = self._raw(voice, text)
        samples = samples * (PEAK / float(np.max(np.abs(samples))))
        return trim_silence(samples.astype(np.float32), STT_RATE, threshold=VOICED)


@dataclass(frozen=True)
class Sound:
    kind: str
    name: str  # the phrase, or what the noise is
    voice: str
    samples: np.ndarray

    @property
    def onset(self) -> int:
        """Its first audible sample."""
        loud = np.flatnonzero(np.abs(self.samples) > VOICED)
        return int(loud[0]) if len(loud) else 0


def _slice(samples: np.ndarray, ms: int) -> np.ndarray:
    start = int(np.flatnonzero(np.abs(samples) > 2 * VOICED)[0])
    return samples[start : start + ms * STT_RATE // 1000]


def noises(seed: int = 0) -> list[Sound]:
    """Sounds no voice makes: a click (a 10 ms decaying burst) and a breath (250 ms of low,
    rising and falling noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(160) / STT_RATE
    click = rng.standard_normal(160) * np.exp(-t / 0.002)
    breath = np.convolve(rng.standard_normal(4000), np.ones(8) / 8, "same") * np.hanning(4000)
    return [
        Sound("cough/noise", "click", "-", (PEAK * click / np.abs(click).max()).astype(np.float32)),
        Sound("cough/noise", "breath", "-", (0.15 * breath / np.abs(breath).max()).astype(np.float32)),
    ]


def sounds(speakers: Speakers, engine: str) -> Iterator[Sound]:
    """Every sound an engine's voices make, kinds interleaved."""
    voices = VOICES[engine]

    def spoken(kind: str, phrases: Sequence[str]) -> list[Sound]:
        said = [(p, voices[i % len(voices)]) for i, p in enumerate(phrases)]
        return [Sound(kind, p, v.label, speakers.say(v, p)) for p, v in said]

    hum, speech = speakers.say(voices[0], "Hmm."), speakers.say(voices[-1], "Hello there.")
    coughs = [
        Sound("cough/noise", "hum 120 ms", voices[0].label, _slice(hum, 120)),
        Sound("cough/noise", "speech 250 ms", voices[-1].label, _slice(speech, 250)),
    ]
    kinds = [coughs, spoken("backchannel", BACKCHANNELS), spoken("interruption", INTERRUPTIONS)]
    yield from (s for s in chain.from_iterable(zip_longest(*kinds)) if s is not None)


def _streamed(text: str) -> list[str]:
    """A reply as the LLM of the bench streams it: word by word."""
    return [word + " " for word in text.split(" ")]


class Scene(EchoSource):
    """The microphone of one case, in real time, with the reply's echo: silence until the reply
    has played ``INTO_S``, then the sound, then silence until ``settled()`` (or ``SETTLE_S``)."""

    def __init__(self, sound: np.ndarray, speaker: VirtualSpeaker, room: Room, settled: Callable[[], bool]):
        super().__init__(np.zeros(0, np.float32), speaker, delay_ms=ECHO_DELAY_MS, gain=room.gain)
        self.sound, self.settled = sound, settled
        self.sound_at: int | None = None  # on the 16 kHz clock
        self.playing_at_sound = False

    def iter_blocks(self) -> Iterator[np.ndarray]:
        position, settle = 0, int(SETTLE_S * STT_RATE)
        while position < (self.sound_at or 0) + len(self.sound) + settle:
            if self.sound_at is None and self.speaker.busy():  # the reply starts now
                self.sound_at = position + int(INTO_S * STT_RATE)
            block = np.zeros(BLOCK, np.float32)
            if self.sound_at is not None and position + BLOCK > self.sound_at:
                self.playing_at_sound = self.playing_at_sound or self.speaker.busy()
                a = max(0, position - self.sound_at)
                piece = self.sound[a : a + BLOCK]
                start = max(0, self.sound_at - position)
                block[start : start + len(piece)] = piece[: BLOCK - start]
            yield block
            position += BLOCK
            if self.sound_at is not None and position >= self.sound_at + len(self.sound) and self.settled():
                return


@dataclass
class Outcome:
    """What happened in one case (times on the audio clock, in seconds)."""

    kind: str
    sound: str
    voice: str
    room: str
    onset_s: float | None = None  # the sound's first audible sample
    playing: bool = False  # the reply was playing when the sound came
    paused_at_s: float | None = None  # the first hold at or after the onset
    resumed_at_s: float | None = None
    flushed_at_s: float | None = None
    interrupted: bool = False  # an Interrupted event
    # Pieces of the scripted reply voiced after its Interrupted event: a cut that kept talking.
    played_after_cut: int = 0
    all_played: bool = False  # every queued sample of the reply was played
    heard: str = ""  # what Whisper made of the sound (its longest transcription)
    new_turn: str | None = None  # the turn after the interrupted reply

    @property
    def right(self) -> bool:
        return judged_right(self)


def holds(said: str, heard: str | None) -> bool:
    """Whether every word said is among the words heard (punctuation and case aside)."""
    return bool(heard) and set(normalize(said).split()) <= set(normalize(heard or "").split())


def judged_right(o: Outcome) -> bool:
    if not o.playing:
        return False  # the reply was over: nothing was judged
    if o.kind == "interruption":
        return o.flushed_at_s is not None and o.interrupted and holds(o.sound, o.new_turn)
    held_on = o.paused_at_s is None or o.resumed_at_s is not None
    return held_on and o.flushed_at_s is None and not o.interrupted and o.all_played


class Listened:
    """A transcriber that keeps what it heard: a backchannel judged right is never shown."""

    def __init__(self, transcriber: WhisperTranscriber) -> None:
        self.transcriber = transcriber
        self.heard: list[tuple[int, str]] = []  # (samples, text) of every call

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        text = self.transcriber.transcribe(audio, stop=stop)
        self.heard.append((len(audio), text))
        return text

    def longest(self) -> str:
        return max(self.heard, key=lambda h: h[0])[1] if self.heard else ""


class _Models:
    def __init__(self, settings: Settings) -> None:
        self.transcriber = WhisperTranscriber(settings.stt)
        self.synthesizer = HibariSynthesizer(settings.tts)
        self.transcriber.warm_up()
        self.synthesizer.warm_up()


async def play_case(models: _Models, settings: Settings, sound: Sound, room: Room) -> Outcome:
    """One reply, one sound over it, one room."""
    speaker = VirtualSpeaker(models.synthesizer.sample_rate)
    printer = CollectingPrinter()
    aec = make_echo_canceller("webrtc", int(ECHO_DELAY_MS)) if room.aec else None
    listened = Listened(models.transcriber)
    # The LLM of the bench: the same reply to the request, word by word, and a short answer to
    # any turn after it.
    chat = ScriptedChat(_streamed(REPLY), _streamed(ANSWER), delay_s=0.01)
    assistant = Assistant(settings, listened, chat, models.synthesizer, speaker, printer, aec=aec)

    def transcripts() -> list[str]:
        return [e.text for e in printer.events if isinstance(e, Transcript) and not e.partial]

    def settled() -> bool:
        if any(isinstance(e, Interrupted) for e in printer.events):
            return len(transcripts()) >= 2  # the new turn has been heard
        return bool(assistant.recorder.done) and not speaker.busy()  # the reply has played to its end

    scene = Scene(sound.samples, speaker, room, settled)
    running = asyncio.create_task(assistant.run(scene))
    asking = asyncio.create_task(assistant.answer(REQUEST))
    try:
        done = await running
    finally:
        if not asking.done():
            asking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asking
    out = Outcome(sound.kind, sound.name, sound.voice, room.name, heard=listened.longest())
    if scene.sound_at is None:
        return out
    onset = (scene.sound_at + sound.onset) / STT_RATE
    out.onset_s, out.playing = round(onset, 3), scene.playing_at_sound
    paused = [t for t in speaker.paused_at_s if t >= onset - 0.05]
    if paused:
        out.paused_at_s = paused[0]
        out.resumed_at_s = next((t for t in speaker.resumed_at_s if t >= paused[0]), None)
    out.flushed_at_s = speaker.flushed_at_s[0] if speaker.flushed_at_s else None
    out.interrupted = any(isinstance(e, Interrupted) for e in printer.events)
    if out.interrupted:
        cut = next(i for i, e in enumerate(printer.events) if isinstance(e, Interrupted))
        out.played_after_cut = sum(
            isinstance(e, AudioChunk) and e.text.strip() in REPLY for e in printer.events[cut + 1 :]
        )
    out.all_played = speaker.played_total == speaker.queued_total
    out.new_turn = done[1].user if len(done) > 1 else None
    return out


def _cases(speakers: Speakers, engines: Sequence[str], rooms: Sequence[Room]) -> list[tuple[Sound, Room]]:
    """Every sound in every room: the voice-free noises once per room, each engine's sounds."""
    made = list(chain.from_iterable(sounds(speakers, e) for e in engines))
    made[3:3] = noises()  # after one sound of each kind: a short run still has every kind
    return [(s, r) for r in rooms for s in made]


def run_interruptions(
    settings: Settings,
    limit: int | None = None,
    say: Callable[[str], None] = print,
    engines: Sequence[str] = ENGINES,
    rooms: Sequence[Room] = ROOMS,
) -> dict[str, Any]:
    """Every case (the first ``limit``), one after the other: the summary and every outcome."""
    missing = [e for e in engines if not installed(e)]
    engines = [e for e in engines if e not in missing]
    if missing:
        say(f"not installed, left out: {', '.join(missing)}")
    # Interim transcripts on the STT thread, as the barge-in tests run it; no second model.
    settings = dataclasses.replace(settings, stt=dataclasses.replace(settings.stt, interim_model=False))
    models = _Models(settings)
    with tempfile.TemporaryDirectory() as tmp:
        cases = _cases(Speakers(Path(tmp)), engines, rooms)[:limit]
    outcomes: list[Outcome] = []
    for n, (sound, room) in enumerate(cases, 1):
        say(f"{n}/{len(cases)} {room.name}: {sound.kind} {sound.name!r} ({sound.voice})…")
        outcomes.append(asyncio.run(play_case(models, settings, sound, room)))
    return {
        "engines": engines,
        "missing": missing,
        "interrupt_ms": settings.vad.interrupt_ms,
        "summary": summarize(outcomes, ("kind", "room")),
        "sounds": summarize(outcomes, ("kind", "sound", "room")),
        "cases": [dataclasses.asdict(o) | {"right": o.right} for o in outcomes],
    }


def _ms(values: list[float], q: float) -> float | None:
    return round(percentile(values, q), 1) if values else None


def summarize(outcomes: Sequence[Outcome], by: tuple[str, ...]) -> list[dict[str, Any]]:
    """Right / total, held, pause-to-resume and onset-to-flush times for each group."""
    groups: dict[tuple[str, ...], list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(tuple(getattr(o, k) for k in by), []).append(o)
    rows = []
    for key, group in groups.items():
        resume = [
            (o.resumed_at_s - o.paused_at_s) * 1000
            for o in group
            if o.paused_at_s is not None and o.resumed_at_s is not None
        ]
        flush = [
            (o.flushed_at_s - o.onset_s) * 1000
            for o in group
            if o.flushed_at_s is not None and o.onset_s is not None
        ]
        # The reply goes quiet at its first hold (or at the cut, if it was never held).
        quiet = [
            (min(t for t in (o.paused_at_s, o.flushed_at_s) if t is not None) - o.onset_s) * 1000
            for o in group
            if o.onset_s is not None and (o.paused_at_s is not None or o.flushed_at_s is not None)
        ]
        rows.append(
            dict(zip(by, key, strict=True))
            | {
                "right": sum(o.right for o in group),
                "total": len(group),
                "held": sum(o.paused_at_s is not None for o in group),
                "cut": sum(o.flushed_at_s is not None and o.interrupted for o in group),
                "resume_p50_ms": _ms(resume, 0.5),
                "flush_p50_ms": _ms(flush, 0.5),
                "flush_p95_ms": _ms(flush, 0.95),
                "silence_p50_ms": _ms(quiet, 0.5),
                "silence_p95_ms": _ms(quiet, 0.95),
                "played_after_cut": sum(o.played_after_cut for o in group),
                "heard": sorted({o.heard for o in group if o.heard}),
            }
        )
    return rows


def interruptions_table(result: dict[str, Any]) -> str:
    """Right / total per kind and room (held: paused by it; cut: flushed), the times (to the
    reply's silence, to its cut, of a hold until it went on), the reply's pieces voiced after a
    cut (0 unless barge-in is broken), then each sound with what Whisper made of it."""

    def ms(value: float | None) -> str:
        return "—" if value is None else f"{value:.0f}"

    lines = [
        f"{'kind':<14}{'room':<14}{'right':>7}{'held':>6}{'cut':>5}"
        f"{'resume p50 (ms)':>17}{'onset-to-silence p50 / p95':>28}{'onset-to-flush p50 / p95':>26}"
        f"{'played after cut':>18}"
    ]
    for r in result["summary"]:
        cuts = r["kind"] == "interruption"
        flush = f"{ms(r['flush_p50_ms'])} / {ms(r['flush_p95_ms'])}" if cuts else "—"
        quiet = f"{ms(r.get('silence_p50_ms'))} / {ms(r.get('silence_p95_ms'))}"
        after = str(r.get("played_after_cut", 0)) if cuts else "—"
        lines.append(
            f"{r['kind']:<14}{r['room']:<14}{r['right']:>3}/{r['total']:<3}{r['held']:>6}{r['cut']:>5}"
            f"{'—' if cuts else ms(r['resume_p50_ms']):>17}{quiet:>28}{flush:>26}{after:>18}"
        )
    lines += ["", f"{'sound':<34}{'room':<14}{'right':>7}  heard"]
    for r in result["sounds"]:
        heard = " / ".join(repr(h) for h in r["heard"])
        lines.append(f"{r['sound']:<34}{r['room']:<14}{r['right']:>3}/{r['total']:<3}  {heard}")
    engines = ", ".join(result["engines"])
    missing = f"; not installed: {', '.join(result['missing'])}" if result["missing"] else ""
    lines.append(f"voices: {engines}{missing}; interrupt_ms {result['interrupt_ms']}")
    return "\n".join(lines)
