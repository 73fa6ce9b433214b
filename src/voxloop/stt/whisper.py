"""faster-whisper, int8 on CPU, with guards against Whisper's hallucinations.

Whisper invents text for silence and noise ("Thank you.", "you", "[Music]"). A segment is
dropped when Whisper itself thinks it holds no speech (no-speech probability high *and*
log-probability low, Whisper's own rule), when its text repeats itself (compression ratio), or
when it is only a bracketed sound description. The VAD already gates what reaches Whisper, so
both have to agree before noise becomes a turn.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxloop.errors import ConfigError, ModelNotFoundError
from voxloop.settings import SttSettings
from voxloop.stt import models
from voxloop.stt.models import bundled

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer

log = logging.getLogger(__name__)

_SOUND_TAG = re.compile(r"^\s*[\[\(\*♪].*[\]\)\*♪]\s*$")
_TAGS = re.compile(r"[\[\(][^\]\)]*[\]\)]")
# Whisper's stock phrases for near-silence; only trusted when Whisper is unsure of them too.
_STOCK = {"you", "thank you", "thanks for watching", "thank you for watching", "bye"}


def _looks_like_folder(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def resolve_model(name: str) -> str:
    """A bundled model ("" or "tiny.en", "base"; verified), a local folder, or a faster-whisper
    model name ("medium.en", "Systran/faster-whisper-small.en") to be found in the local Hugging
    Face cache."""
    if (b := bundled(name)) is not None:
        path = models.folder(b)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            if not _looks_like_folder(name):
                return name
            raise ModelNotFoundError(
                f"STT model folder {name} not found. Pass a folder with a CTranslate2 Whisper model "
                "(model.bin, config.json), or pick a bundled one: --stt-model tiny.en or base."
            )
    if not (path / "model.bin").is_file():
        raise ModelNotFoundError(
            f"STT model folder {path} has no model.bin. Point --stt-model at a faster-whisper "
            "(CTranslate2) model folder."
        )
    return str(path)


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float


@dataclass(frozen=True, slots=True)
class TimedSegment:
    """A piece of a longer recording with its place in it, as OpenAI's verbose_json lists them."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


def _repeats_itself(text: str, n: int = 4) -> bool:
    """True if any run of ``n`` words occurs twice: a sign of a decoder looping."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def encoder_window(seconds: float, settings: SttSettings) -> float | None:
    """The encoder window for an utterance this long: the shortest configured one that holds it
    with 0.5 s to spare, or None for Whisper's own 30 s path. The encoder's time grows with the
    window (tiny.en on 2 cores: 36 ms for 6 s, 49 ms for 8 s, 66 ms for 10 s, 530 ms for 30 s),
    and the decoder's a little (its cross-attention reads the whole window)."""
    windows = (settings.short_window_s, settings.mid_window_s, settings.window_s)
    for window in sorted(w for w in windows if 0 < w < 30):
        if seconds <= window - 0.5:
            return window
    return None


def cut_restart(tokens: list[int], least: int = 2) -> list[int]:
    """The tokens up to where the decoder starts the utterance over, if it does.

    A restart is ``least`` or more tokens at position j >= 2 that repeat the first tokens (all of
    them that fit, up to j). Whisper on a short window sometimes loops on the whole utterance
    ("Yes. Yes. Yes."); the first pass is what was said.
    """
    n = len(tokens)
    for j in range(2, n - least + 1):
        k = min(n - j, j)
        if tokens[j : j + k] == tokens[:k]:
            return tokens[:j]
    return tokens


def clean_text(text: str) -> str:
    """Drop bracketed sound descriptions and tidy spaces."""
    if _SOUND_TAG.match(text):
        return ""
    return re.sub(r"\s+", " ", _TAGS.sub(" ", text)).strip()


class WhisperTranscriber:
    def __init__(self, settings: SttSettings) -> None:
        from faster_whisper import WhisperModel

        self.settings = settings
        models.check_language(bundled(settings.model), settings.language)
        model = resolve_model(settings.model)
        try:
            self.model = WhisperModel(
                model,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.threads,
                local_files_only=not settings.allow_download,
            )
        except Exception as exc:
            if Path(model).exists() or settings.allow_download:
                raise ModelNotFoundError(f"Cannot load STT model {model}: {exc}") from None
            raise ModelNotFoundError(
                f"STT model {model} is not on this machine (no such folder, not in the Hugging Face "
                "cache). voxloop never downloads by default: pass --stt-allow-download to fetch it "
                "once, or pass a model folder."
            ) from None

        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        multilingual = self.model.model.is_multilingual
        if not multilingual:
            language = "en"
        elif settings.language and settings.language not in self.model.supported_languages:
            raise ConfigError(
                f"Whisper does not know the language {settings.language!r}. Pass a two-letter code "
                "such as en, de, fr, es, ja, or leave --language empty to detect it."
            )
        else:
            language = settings.language  # "" = detected for each utterance

        def tokenizer(code: str) -> Tokenizer:
            return Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=code)

        self._tokenizer = tokenizer(language or "en")
        self._tokenizers: dict[str, Tokenizer] = {self._tokenizer.language_code: self._tokenizer}
        self._new_tokenizer = tokenizer
        self._detect = not language
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]) or [])
        self.language = language  # the last utterance's language when detected

    def _prompt(self, encoded: object) -> tuple[list[int], Tokenizer]:
        """The decoder's start: the fixed language, or the one Whisper hears in ``encoded``."""
        tok = self._tokenizer
        if self._detect:
            found = self.model.model.detect_language(encoded)[0][0][0]  # ("<|de|>", p), best first
            code = found.strip("<|>")
            if code not in self._tokenizers:
                self._tokenizers[code] = self._new_tokenizer(code)
            tok = self._tokenizers[code]
            self.language = code
        return [*tok.sot_sequence, tok.no_timestamps], tok

    def warm_up(self) -> None:
        self.transcribe(np.zeros(8000, np.float32))

    def _keep(self, seg: Segment) -> bool:
        s = self.settings
        text = seg.text.strip().lower().strip(".!?, ")
        if seg.no_speech_prob > s.no_speech_threshold and seg.avg_logprob < s.log_prob_threshold:
            return False
        if seg.compression_ratio > 2.4:
            return False
        # A lone stock phrase that Whisper is unsure of is its habit on near-silence.
        return not (text in _STOCK and seg.no_speech_prob > 0.5 and seg.avg_logprob < -0.6)

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        audio = audio.astype(np.float32, copy=False)
        segments: list[Segment] = []
        window = encoder_window(len(audio) / 16000, self.settings)
        if window is not None:
            segment = self._decode_window(audio, window, stop)
            if segment is None:
                return ""
            if not _repeats_itself(segment.text):
                segments = [segment]
        if not segments:
            if stop is not None and stop():
                return ""
            segments = self._decode_30s(audio)
        kept = []
        for seg in segments:
            if self._keep(seg):
                kept.append(seg.text)
            else:
                log.debug(
                    "dropped %r (no_speech=%.2f logprob=%.2f)", seg.text, seg.no_speech_prob, seg.avg_logprob
                )
        return clean_text(" ".join(kept))

    def timed_segments(
        self, audio: np.ndarray, language: str = "", prompt: str = "", temperature: float = 0.0
    ) -> tuple[str, Iterator[TimedSegment]]:
        """A recording of any length in Whisper's 30 s windows, with times: its language (fixed or
        detected here) and its segments, kept by the rules of :meth:`transcribe`. The segments
        are decoded as they are read: iterate them in the caller's worker thread.

        A segment's compression ratio is its own text's: faster-whisper gives each the ratio of
        its whole window, and a window of real speech that repeats itself (a list read out, a
        chorus) would otherwise be dropped entire, as a looping decoder is."""
        from faster_whisper.transcribe import get_compression_ratio

        if language and language != "en" and not self.model.model.is_multilingual:
            raise ConfigError(f"This Whisper model understands English only; {language!r} was asked for.")
        if language and language not in self.model.supported_languages:
            raise ConfigError(f"Whisper does not know the language {language!r}. Pass a two-letter code.")
        s = self.settings
        found, info = self.model.transcribe(
            audio.astype(np.float32, copy=False),
            language=language or s.language or None,
            initial_prompt=prompt or None,
            beam_size=s.beam_size,
            temperature=temperature,
            condition_on_previous_text=False,
            vad_filter=False,
        )

        def kept() -> Iterator[TimedSegment]:
            n = 0
            for g in found:
                text = clean_text(g.text)
                ratio = get_compression_ratio(text) if text else 0.0
                if not text or not self._keep(Segment(text, g.no_speech_prob, g.avg_logprob, ratio)):
                    continue
                yield TimedSegment(
                    n, g.seek, g.start, g.end, text, tuple(g.tokens), g.temperature or temperature,
                    g.avg_logprob, ratio, g.no_speech_prob,
                )  # fmt: skip
                n += 1

        return info.language, kept()

    def _decode_30s(self, audio: np.ndarray) -> list[Segment]:
        """faster-whisper's own path: the encoder sees the audio padded to 30 s."""
        s = self.settings
        segments, info = self.model.transcribe(
            audio,
            language=s.language or None,
            beam_size=s.beam_size,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            temperature=0.0,
        )
        if self._detect:
            self.language = info.language
        # The generator runs the decoder: consume it here, in the caller's worker thread.
        return [Segment(g.text, g.no_speech_prob, g.avg_logprob, g.compression_ratio) for g in segments]

    def _decode_window(
        self, audio: np.ndarray, window_s: float, stop: Callable[[], bool] | None = None
    ) -> Segment | None:
        """Encode a window of ``window_s`` instead of 30 s: 2-3x faster on a short utterance.

        Padding differs by window, as measured: for the short window the audio is padded with
        silence before its log-mel features are made, as in Whisper's training; padding the
        features with zeros instead (faster-whisper's way for 30 s) reads as more sound to
        come, and on short answers the decoder then drops the final period ("Good morning"),
        which keeps the endpointer waiting for more, or loops. For the long window the features
        are zero-padded: there, silence-padded audio lost the first words of echo-cancelled
        double talk. The decoder's length is capped to what the audio could hold. A short window
        can make the decoder start the utterance over ("What time is it? What time is it?"):
        the loop is cut off at the first restart. None when ``stop`` says so after the encoder.
        """
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage

        m = self.model
        frames = int(window_s * 100)
        if window_s <= self.settings.short_window_s:
            padded = np.pad(audio, (0, max(0, int(window_s * 16000) - len(audio))))
            features = m.feature_extractor(padded)[..., :frames]
        else:
            features = pad_or_trim(m.feature_extractor(audio)[..., :-1], frames)
        features = np.ascontiguousarray(features)
        encoded = m.model.encode(get_ctranslate2_storage(features[None]))
        if stop is not None and stop():
            return None  # the decoder is the longer half on a long utterance: skip it
        prompt, tokenizer = self._prompt(encoded)
        result = m.model.generate(
            encoded,
            [prompt],
            beam_size=self.settings.beam_size,
            max_length=min(m.max_length, 16 + int(len(audio) / 16000 * 10)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        text = tokenizer.decode(cut_restart(tokens)).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        return Segment(text, result.no_speech_prob, avg_logprob, get_compression_ratio(text) if text else 0.0)
