"""Regenerate the spoken question set used by ``voxloop bench --quality`` (``benchmarks/quality/``).

Why a generated, shipped set: the quality benchmark plays each recording through the real
pipeline in real time and scores three things: was the question heard (the transcript against
the text that was spoken), was the reply right (keywords), and does the assistant remember (the
last turn of a conversation asks for a fact given earlier). Scoring "heard" needs the exact text
of every turn and scoring timing needs its exact voiced start and end, which recordings of people
do not give; synthesizing on the fly would tie the scores to whatever TTS is installed. So the
recordings are synthesized once, with fixed seeds, and committed; this script is kept so the set
can be remade or extended. It reuses ``make_set.py`` (the latency set's voices, trimming and
level) and adds Debian's ``festival`` as a third engine, so the set is not tuned to one
synthesizer: hibari (voxloop's own TTS), espeak-ng and festival voices take turns, question by
question.

Two kinds of recording:

* ``question``: one question, 0.5 s of silence before it and 1.5 s after.
* ``memory``: three turns separated by 9.0 s of silence (the assistant answers in the gap), with
  the same 0.5 s before and 1.5 s after; the last turn (``"memory": true``) asks for a fact given
  in an earlier turn.

Each turn's ``answer`` is a list of keyword groups, each a list of alternatives: a reply is right
when every group has an alternative in the normalized reply (lowercase, no punctuation, number
words as digits, so numbers are written as digits here). Statements have ``null``.

``human/`` holds a few real recordings of people, with their transcripts, taken from Debian
packages whose licences allow redistribution (see ``HUMAN``, ``human/SOURCES.txt`` and the
packages' copyright files beside it). They are converted only when ``--human`` is given (it runs
``apt-get download`` and ``dpkg -x``); otherwise the committed files are kept as they are.

Needs ``espeak-ng``, ``festival``, ``festvox-kallpc16k``, ``festvox-kdlpc16k`` and
``festvox-us-slt-hts`` (Debian/Ubuntu packages) besides voxloop itself. Run from the repository
root::

    python benchmarks/make_quality_set.py            # synthesized recordings + manifest
    python benchmarks/make_quality_set.py --human    # also re-extract the human recordings
    python benchmarks/make_quality_set.py --check-only   # how many turns tiny.en hears (WER <= 0.25)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from make_set import PEAK, RATE, VOICED, Speaker, Voice, build_recording

from voxloop.audio.decode import load_audio, resample
from voxloop.audio.speech import trim_silence

OUT_DIR = Path(__file__).resolve().parent / "quality"
LEAD_S = 0.5  # silence before the first turn
TAIL_S = 1.5  # silence after the (last) turn: the benchmark itself waits for the last reply
TURN_GAP_S = 9.0  # silence between the turns of a memory conversation: the assistant answers

Answer = list[list[str]] | None


def any_of(alternatives: str) -> Answer:
    """One keyword group from comma-separated alternatives: a reply that has any of them is right."""
    return [alternatives.split(", ")]


class QualityVoice(Voice):
    """make_set's Voice, plus festival voices: ``speed`` is a speaking-rate factor (1.0 = the
    voice's own), applied as Duration_Stretch = 1/speed (diphone voices) or hts_engine's -r (HTS)."""

    @property
    def label(self) -> str:
        if self.engine == "festival":
            return f"festival {self.name} {self.speed}x"
        return super().label


class QualitySpeaker(Speaker):
    """make_set's Speaker (hibari, espeak-ng), plus festival through ``text2wave``."""

    def _festival_sentence(self, voice: Voice, text: str) -> np.ndarray:
        txt = self.workdir / "festival.txt"
        wav = self.workdir / "festival.wav"
        txt.write_text(text + "\n")
        if voice.name.endswith("_hts"):
            speed = f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {voice.speed}))))'
        else:
            speed = f"(Parameter.set 'Duration_Stretch {1.0 / voice.speed:.4f})"
        subprocess.run(
            ["text2wave", str(txt), "-o", str(wav), "-eval", f"(voice_{voice.name})", "-eval", speed],
            check=True,
        )
        return load_audio(wav, target_rate=RATE)

    def sentence(self, voice: Voice, text: str) -> np.ndarray:
        if voice.engine != "festival":
            return super().sentence(voice, text)
        samples = self._festival_sentence(voice, text)
        samples = samples * (PEAK / float(np.max(np.abs(samples))))  # same level and trim as make_set
        return trim_silence(samples.astype(np.float32), RATE, threshold=VOICED)


# Five voices per engine (see assign_voices). hibari ships one voice ("heart"): it varies by speed.
VOICES: list[QualityVoice] = [
    QualityVoice("hibari", "heart", 1.0),
    QualityVoice("espeak-ng", "en-us+m3", 150),
    QualityVoice("festival", "kal_diphone", 1.0),
    QualityVoice("hibari", "heart", 0.9),
    QualityVoice("espeak-ng", "en-gb+f2", 140),
    QualityVoice("festival", "cmu_us_slt_arctic_hts", 1.0),
    QualityVoice("hibari", "heart", 1.1),
    QualityVoice("espeak-ng", "en-us+f2", 150),
    QualityVoice("festival", "ked_diphone", 0.95),
    QualityVoice("hibari", "heart", 0.95),
    QualityVoice("espeak-ng", "en-gb-x-rp+m5", 135),
    QualityVoice("festival", "cmu_us_slt_arctic_hts", 1.1),
    QualityVoice("hibari", "heart", 1.05),
    QualityVoice("espeak-ng", "en-us+m7", 145),
    QualityVoice("festival", "kal_diphone", 0.9),
]

# (topic, question, answer groups). Only questions with one clear answer that a small chat model
# knows, in common words; no time or date questions (the model cannot know them).
QUESTIONS: list[tuple[str, str, Answer]] = [
    ("facts", "What is the capital of France?", [["paris"]]),
    ("facts", "Who wrote Romeo and Juliet?", [["shakespeare"]]),
    ("arithmetic", "What is seven plus five?", [["12"]]),
    (
        "advice",
        "How can I keep bread fresh longer?",
        any_of("freez, airtight, bag, box, wrap, container, seal, cool, dry, fridge, refrigerat"),
    ),
    ("definitions", "How many centimeters are in a meter?", [["100"]]),
    ("language", "What is the opposite of cold?", [["hot", "warm"]]),
    ("facts", "How many legs does a spider have?", [["8"]]),
    ("facts", "What is the largest planet in our solar system?", [["jupiter"]]),
    ("arithmetic", "What is ten times three?", [["30"]]),
    ("definitions", "How many minutes are in an hour?", [["60"]]),
    ("facts", "What color do you get by mixing blue and yellow?", [["green"]]),
    ("language", "What is the plural of mouse?", [["mice"]]),
    ("facts", "Which planet is known as the red planet?", [["mars"]]),
    ("advice", "What should I do if I burn my finger on the stove?", any_of("cool, cold, water, running")),
    ("facts", "What is the capital of Japan?", [["tokyo"]]),
    ("arithmetic", "What is twenty minus eight?", [["12"]]),
    ("definitions", "How many grams are in a kilogram?", [["1000"]]),
    ("language", "What is the past tense of go?", [["went"]]),
    ("facts", "Who painted the Mona Lisa?", [["vinci", "leonardo"]]),
    ("facts", "What is the largest ocean on Earth?", [["pacific"]]),
    (
        "advice",
        "How can I fall asleep faster?",
        any_of(
            "screen, routine, dark, caffeine, relax, breath, read, meditat, schedule, phone, cool, quiet, exercis"
        ),
    ),
    ("arithmetic", "What is six times four?", [["24"]]),
    ("definitions", "How many days are in a leap year?", [["366"]]),
    ("language", "What is the opposite of early?", [["late"]]),
    ("facts", "Who was the first president of the United States?", [["washington"]]),
    ("facts", "What do bees make?", [["honey"]]),
    ("arithmetic", "What is nine plus six?", [["15"]]),
    ("definitions", "What do we call a baby cat?", [["kitten"]]),
    (
        "advice",
        "What should I wear on a cold day?",
        any_of("coat, jacket, layer, sweater, scarf, hat, glove, warm, boots"),
    ),
    ("language", "What is the plural of child?", [["children"]]),
    ("facts", "How many continents are there?", [["7"]]),
    ("facts", "What is the tallest mountain in the world?", [["everest"]]),
    ("arithmetic", "What is one hundred divided by four?", [["25"]]),
    ("definitions", "How many sides does a triangle have?", [["3"]]),
    ("language", "What is the Spanish word for hello?", [["hola"]]),
    ("facts", "What animal is called the king of the jungle?", [["lion"]]),
    (
        "advice",
        "How can I save money on groceries?",
        any_of("list, budget, sale, bulk, coupon, plan, brand, discount, compar, season, cook"),
    ),
    ("facts", "What is the capital of Germany?", [["berlin"]]),
    ("arithmetic", "How many hours are in a day?", [["24"]]),
    ("definitions", "How many months are in a year?", [["12"]]),
    ("language", "What is the opposite of happy?", [["sad", "unhappy"]]),
    ("facts", "Which country is famous for the great pyramids?", [["egypt"]]),
    ("facts", "What is the hardest natural material?", [["diamond"]]),
    (
        "advice",
        "How do I get a coffee stain out of my shirt?",
        any_of("water, soap, detergent, vinegar, baking soda, stain remover, blot, rins, soak, wash"),
    ),
    ("arithmetic", "What is half of fifty?", [["25"]]),
    ("definitions", "How many seconds are in a minute?", [["60"]]),
    (
        "language",
        "What is another word for big?",
        [["large", "huge", "giant", "enormous", "massive", "vast", "great", "immense", "gigantic"]],
    ),
    ("facts", "What gas do people need to breathe?", [["oxygen"]]),
]

# (topic, [(turn, answer), ...]): the last turn asks for a fact from turn 1 or 2 and is marked
# "memory"; the middle turn is an unrelated question (scored) or a second fact (not scored).
MEMORY: list[tuple[str, list[tuple[str, Answer]]]] = [
    (
        "name",
        [
            ("Hi, my name is Alice.", None),
            ("What is the capital of Italy?", [["rome"]]),
            ("Do you remember my name?", [["alice"]]),
        ],
    ),
    (
        "number",
        [
            ("My favorite number is seven.", None),
            ("What is the capital of Spain?", [["madrid"]]),
            ("What is my favorite number?", [["7"]]),
        ],
    ),
    (
        "place",
        [
            ("I live in Chicago.", None),
            ("How many legs does a dog have?", [["4"]]),
            ("What city do I live in?", [["chicago"]]),
        ],
    ),
    (
        "pet",
        [
            ("My dog is called Max.", None),
            ("What color is the sky on a clear day?", [["blue"]]),
            ("What is my dog's name?", [["max"]]),
        ],
    ),
    (
        "count",
        [
            ("I have two cats and three dogs.", None),
            ("What is the opposite of tall?", [["short"]]),
            ("How many pets do I have?", [["5"]]),
        ],
    ),
    (
        "job",
        [
            ("My name is David and I work as a teacher.", None),
            ("What is ten plus ten?", [["20"]]),
            ("What is my job?", [["teach"]]),
        ],
    ),
    (
        "place",
        [
            ("My sister Maria lives in London.", None),
            ("How many days are in a week?", [["7"]]),
            ("In which city does my sister live?", [["london"]]),
        ],
    ),
    (
        "name",
        [
            ("Hello, this is Sarah.", None),
            ("My cat is called Tom.", None),
            ("What is the name of my cat?", [["tom"]]),
        ],
    ),
]


@dataclass(frozen=True)
class HumanClip:
    """A recording of a person from a Debian package, with its transcript and licence."""

    package: str
    path: str  # inside the package
    file: str  # under human/
    text: str
    licence: str


POCKETSPHINX = "BSD-2-Clause (Carnegie Mellon University), see /usr/share/doc/pocketsphinx-testdata/copyright"
LIBRIVOX = "LibriVox recording of Jane Austen's Sense and Sensibility (public domain), " + POCKETSPHINX
ASTERISK = (
    "CC-BY-SA-3.0 (https://creativecommons.org/licenses/by-sa/3.0/), recorded by Allison Smith "
    "(theivrvoice.com) for Digium; modified: resampled from 8 to 16 kHz and padded with silence"
)
PS_DATA = "usr/share/pocketsphinx/test/data"
ALLISON = "usr/share/asterisk/sounds/en_US_f_Allison"
HUMAN: list[HumanClip] = [
    # pocketsphinx's own test audio; transcripts from the files beside them (librivox/transcription,
    # cards/cards.transcription) and, for goforward.raw, the grammar's rule goforward.gram.
    HumanClip(
        "pocketsphinx-testdata",
        f"{PS_DATA}/goforward.raw",
        "ps-goforward.flac",
        "go forward ten meters",
        POCKETSPHINX,
    ),
    HumanClip(
        "pocketsphinx-testdata", f"{PS_DATA}/cards/001.wav", "ps-cards-001.flac", "ten of clubs", POCKETSPHINX
    ),
    HumanClip(
        "pocketsphinx-testdata",
        f"{PS_DATA}/cards/005.wav",
        "ps-cards-005.flac",
        "eight of spades four of clubs seven of hearts",
        POCKETSPHINX,
    ),
    HumanClip(
        "pocketsphinx-testdata",
        f"{PS_DATA}/librivox/sense_and_sensibility_01_austen_64kb-0880.wav",
        "librivox-0880.flac",
        "he was not an ill disposed young man",
        LIBRIVOX,
    ),
    HumanClip(
        "pocketsphinx-testdata",
        f"{PS_DATA}/librivox/sense_and_sensibility_01_austen_64kb-0890.wav",
        "librivox-0890.flac",
        "unless to be rather cold hearted and rather selfish is to be ill disposed",
        LIBRIVOX,
    ),
    HumanClip(
        "pocketsphinx-testdata",
        f"{PS_DATA}/librivox/sense_and_sensibility_01_austen_64kb-0930.wav",
        "librivox-0930.flac",
        "he might even have been made amiable himself",
        LIBRIVOX,
    ),
    # Asterisk's English prompts; transcripts from the package's core-sounds-en.txt.
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/vm-savefolder.wav",
        "allison-savefolder.flac",
        "Which folder should I save the message to?",
        ASTERISK,
    ),
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/check-number-dial-again.wav",
        "allison-check-number.flac",
        "Please check the number and dial again.",
        ASTERISK,
    ),
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/pls-hold-while-try.wav",
        "allison-hold.flac",
        "Please hold while we try to connect you.",
        ASTERISK,
    ),
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/vm-nobodyavail.wav",
        "allison-nobody.flac",
        "Nobody is available to take your call at the moment",
        ASTERISK,
    ),
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/tt-weasels.wav",
        "allison-weasels.flac",
        "Weasels have eaten our phone system",
        ASTERISK,
    ),
    HumanClip(
        "asterisk-core-sounds-en-wav",
        f"{ALLISON}/vm-sorry.wav",
        "allison-sorry.flac",
        "I'm sorry I did not understand your response.",
        ASTERISK,
    ),
]


def build(
    speaker: Speaker, voice: Voice, turns: list[str], gap_s: float = TURN_GAP_S, tail_s: float = TAIL_S
) -> tuple[np.ndarray, list[dict[str, object]]]:
    """make_set.build_recording with this set's gaps: a turn of several sentences is split on
    ". " (and joined with make_set's sentence gap)."""
    sentences = [tuple(s for s in text.replace(". ", ".\n").split("\n") if s) for text in turns]
    return build_recording(speaker, voice, sentences, lead_s=LEAD_S, gap_s=gap_s, tail_s=tail_s)


def assign_voices(groups: list[str]) -> list[QualityVoice]:
    """A voice for each recording, given its group (question topic, or "memory"): within a group
    the engines take turns, so every topic is heard in all three; within an engine its voices take
    turns, so each engine speaks about a third of the set and no voice more than a few recordings."""
    engines = list(dict.fromkeys(v.engine for v in VOICES))
    voices = {e: [v for v in VOICES if v.engine == e] for e in engines}
    first = list(dict.fromkeys(groups))  # a group starts on the engine after the previous group's
    seen: dict[str, int] = {}
    used = dict.fromkeys(engines, 0)
    chosen: list[QualityVoice] = []
    for group in groups:
        k = seen[group] = seen.get(group, -1) + 1
        engine = engines[(k + first.index(group)) % len(engines)]
        chosen.append(voices[engine][used[engine] % len(voices[engine])])
        used[engine] += 1
    return chosen


def write_flac(path: Path, samples: np.ndarray) -> None:
    # lossless, 16-bit: a quarter of the WAV's size in the repository, bit-identical on re-runs
    sf.write(path, np.clip(samples, -1.0, 1.0), RATE, subtype="PCM_16")


def synthesize_all(out: Path) -> list[dict[str, object]]:
    jobs: list[tuple[str, str, str, list[tuple[str, Answer]]]] = [
        (f"q{n:02d}.flac", "question", topic, [(text, answer)])
        for n, (topic, text, answer) in enumerate(QUESTIONS, start=1)
    ]
    jobs += [(f"m{n:02d}.flac", "memory", topic, turns) for n, (topic, turns) in enumerate(MEMORY, 1)]
    recordings: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        speaker = QualitySpeaker(Path(tmp))
        voices = assign_voices([topic if kind == "question" else kind for _, kind, topic, _ in jobs])
        for voice, (name, kind, topic, turns) in zip(voices, jobs, strict=True):
            samples, placed = build(speaker, voice, [t for t, _ in turns])
            for i, (turn, (_, answer)) in enumerate(zip(placed, turns, strict=True)):
                turn["answer"] = answer
                if kind == "memory" and i == len(turns) - 1:
                    turn["memory"] = True
            write_flac(out / name, samples)
            recordings.append(
                {"file": name, "voice": voice.label, "kind": kind, "topic": topic, "turns": placed}
            )
            print(f"{name}: {kind}/{topic}, {len(samples) / RATE:.1f} s, {voice.label}")
    return recordings


def extract_human(out: Path) -> None:
    """Download the packages (no install), unpack them and convert each clip to 16 kHz mono FLAC,
    with the questions' 0.5 s of silence before and 1.5 s after."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for package in sorted({clip.package for clip in HUMAN}):
            subprocess.run(["apt-get", "download", package], cwd=root, check=True)
            (deb,) = root.glob(f"{package}_*.deb")
            subprocess.run(["dpkg", "-x", str(deb), str(root / package)], check=True)
            # the licences ask for their notice (BSD) or text/URI (CC-BY-SA) to travel with the files
            copyright_file = root / package / "usr/share/doc" / package / "copyright"
            (out / f"{package}.copyright").write_text(copyright_file.read_text())
        for clip in HUMAN:
            source = root / clip.package / clip.path
            if source.suffix == ".raw":  # headerless 16 kHz 16-bit little-endian mono
                samples = np.fromfile(source, dtype="<i2").astype(np.float32) / 32768.0
            else:
                data, rate = sf.read(source, dtype="float32", always_2d=True)
                samples = resample(data.mean(axis=1), rate, RATE)
            silence = np.zeros(int(LEAD_S * RATE), np.float32), np.zeros(int(TAIL_S * RATE), np.float32)
            write_flac(out / clip.file, np.concatenate([silence[0], samples, silence[1]]))
            print(f"human/{clip.file}: {len(samples) / RATE:.1f} s from {clip.package}")
    lines = [
        "Recordings of people, converted to 16 kHz mono FLAC (0.5 s of silence added before,",
        "1.5 s after) by benchmarks/make_quality_set.py --human. Sources and licences (each",
        "package's full copyright file is beside this one, as PACKAGE.copyright):",
        "",
    ]
    lines += [f'{c.file}: Debian package {c.package}, /{c.path}\n  "{c.text}"\n  {c.licence}' for c in HUMAN]
    (out / "SOURCES.txt").write_text("\n".join(lines) + "\n")


_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
NUMBER_WORDS = {w: i for i, w in enumerate([*_ONES, *_TEENS, "eighteen", "nineteen"])}
NUMBER_WORDS |= {w: 20 + 10 * i for i, w in enumerate(_TENS)}


def normalize(text: str) -> list[str]:
    """Lowercase words without punctuation, runs of number words as one number in digits
    ("one hundred" -> "100", "twenty four" -> "24"): Whisper writes "7" where "seven" was said."""
    words = re.sub(
        r"[^a-z0-9 ]", "", re.sub(r"[-\u2010-\u2015]", " ", text.lower().replace("+", " plus "))
    ).split()
    out: list[str] = []
    total: int | None = None
    current = 0
    for word in [*words, ""]:
        if word in NUMBER_WORDS:
            value = NUMBER_WORDS[word]
            joins = current % 100 == 0 or (current % 100 >= 20 and current % 10 == 0 and value < 10)
            if total is not None and not joins:  # "one two": two numbers, not three
                out.append(str(total + current))
                total, current = None, 0
            current += value
            total = total or 0
        elif word in ("hundred", "thousand") and total is not None:
            current = max(current, 1) * (100 if word == "hundred" else 1000)
            if word == "thousand":
                total, current = total + current, 0
        else:
            if total is not None:
                out.append(str(total + current))
                total, current = None, 0
            if word:
                out.append(word)
    return out


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of ``hypothesis`` against ``reference``, both normalized."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


def check(out: Path, limit: float = 0.25) -> None:
    """Transcribe every turn (and human clip) with voxloop's STT (the bundled Whisper tiny.en,
    as the pipeline runs it) and print the share heard within WER ``limit``."""
    from voxloop.settings import SttSettings
    from voxloop.stt.whisper import WhisperTranscriber

    stt = WhisperTranscriber(SttSettings(threads=1, interim_model=False))
    manifest = json.loads((out / "manifest.json").read_text())
    heard: dict[str, list[bool]] = {}
    for rec in manifest["recordings"]:
        audio = load_audio(out / rec["file"])
        for turn in rec["turns"]:
            start = max(0, int((turn["start_s"] - 0.3) * RATE))
            text = stt.transcribe(audio[start : int((turn["end_s"] + 0.5) * RATE)])
            error = wer(turn["text"], text)
            heard.setdefault(rec["voice"], []).append(error <= limit)
            mark = "ok  " if error <= limit else "MISS"
            print(f"{mark} {error:4.2f} {rec['file']} [{rec['voice']}] {turn['text']!r} -> {text!r}")
    for clip in manifest["human"]:
        text = stt.transcribe(load_audio(out / clip["file"]))
        error = wer(clip["text"], text)
        heard.setdefault("human", []).append(error <= limit)
        mark = "ok  " if error <= limit else "MISS"
        print(f"{mark} {error:4.2f} {clip['file']} {clip['text']!r} -> {text!r}")
    print()
    for voice, oks in sorted(heard.items()):
        print(f"{sum(oks):3d}/{len(oks):<3d} heard  {voice}")
    synthetic = [ok for voice, oks in heard.items() if voice != "human" for ok in oks]
    print(
        f"synthesized turns heard within WER {limit}: {sum(synthetic)}/{len(synthetic)} "
        f"({100 * sum(synthetic) / len(synthetic):.0f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    parser.add_argument(
        "--human",
        action="store_true",
        help="also re-extract human/ from the Debian packages (apt-get download, dpkg -x)",
    )
    parser.add_argument(
        "--check", action="store_true", help="afterwards, transcribe every turn with tiny.en and report"
    )
    parser.add_argument("--check-only", action="store_true", help="only the check, on the files there")
    args = parser.parse_args()
    if args.check_only:
        check(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "human").mkdir(exist_ok=True)

    recordings = synthesize_all(args.out)
    if args.human:
        extract_human(args.out / "human")
    human = [
        {
            "file": f"human/{clip.file}",
            "text": clip.text,
            "source": f"Debian package {clip.package}, /{clip.path}, {clip.licence}",
        }
        for clip in HUMAN
        if (args.out / "human" / clip.file).is_file()
    ]
    manifest = {"sample_rate": RATE, "recordings": recordings, "human": human}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{len(recordings)} recordings, {len(human)} human clips -> {args.out}")
    if args.check:
        check(args.out)


if __name__ == "__main__":
    main()
