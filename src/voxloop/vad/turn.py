"""The turn model: does the user sound finished, or only paused mid-phrase?

Silence alone cannot tell "What time is it?" from "I'd like to order… um… a pizza"; the words
can (``reply.sounds_finished``), but only once the STT has run. Smart Turn v3.2, pipecat's open
turn model (BSD-2-Clause, 23 languages), hears it in the voice itself: a Whisper-tiny encoder
with a small head, 8.7 MB of ONNX for the CPU, ~50 ms a check on one idle core here (65 / 126
ms p50 / p95 beside the STT in `voxloop bench --endpointing`). It ships
inside the ``pipecat-ai==1.14.0`` wheel, installed with ``--no-deps`` (pipecat's own
dependencies are not needed): the file is pinned and sha256-checked like voxloop's other
packaged models, and without it voxloop endpoints as before, with a warning.

Its input, as pipecat's ``local_smart_turn_v3.py`` builds it: 16 kHz mono, the last 8 s of the
utterance (shorter audio zero-padded on the left), normalized to zero mean and unit variance,
then Whisper's log-mel features (80 mels, 400-sample FFT, hop 160, 800 frames, clamped to 8
below the peak and scaled as ``(x + 4) / 4``), as ``input_features`` of shape (1, 80, 800).
The output is the probability that the turn is complete. voxloop computes the features with
faster-whisper's numpy extractor, the same math as pipecat's vendored copy of transformers'
(``_whisper_features.py``; tests/test_turn.py checks that they agree).

The output is named ``logits`` but is a probability (pipecat reads it as one, 0.5 its boundary).
The pipeline runs the check at the first silent step of a pause, beside the speculative reply's
STT, on the audio that STT gets (the utterance and 0.2 s of silence after it, as pipecat's own
VAD hands it over); how the endpointer weighs the answer is in
:meth:`voxloop.vad.endpointer.SileroEndpointer.wait_ms`.

What it hears, measured at the first silent step (``benchmarks/set``, ``benchmarks/quality``,
``benchmarks/pauses``): finished turns in hibari's voice 0.96-0.99, pauses mid-phrase in it
0.005-0.99 (median 0.6: "…a recipe for," 0.99); espeak-ng voices no better than chance (finished
questions 0.03-0.98); people in ``benchmarks/quality/human`` 0.96-0.99 at the end of a sentence,
0.06-0.37 at most pauses inside one. Hence a high bar before it may end a turn at once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from voxloop.errors import ModelNotFoundError
from voxloop.events import SpeechEnded
from voxloop.packaged import Bundle, Part, part_path, ready
from voxloop.reply import sounds_finished

log = logging.getLogger(__name__)

RATE = 16000
WINDOW_S = 8  # the model hears the last 8 s
FRAMES = 800  # 8 s of 10 ms frames
NORM_EPS = 1e-7  # transformers' WhisperFeatureExtractor's variance floor


_ONNX = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SMART_TURN = Bundle(
    name="smart-turn-v3.2",
    title="Smart Turn v3.2 (pipecat)",
    file="smart-turn/smart-turn-v3.2-cpu.onnx",  # only its verified stamp lives in the models folder
    version="1.14.0",
    size=8_679_182,
    sha256=_SHA256,
    parts=(Part("pipecat-ai", 8_679_182, _SHA256, _ONNX, imports="pipecat"),),
    license="BSD-2-Clause",  # the wheel carries it (pipecat_ai-1.14.0.dist-info/licenses/LICENSE)
    extra="",
    kind="turn model",
    flag="--no-turn-model",
)


@functools.cache
def _extractor() -> Any:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=80, sampling_rate=RATE, hop_length=160, chunk_length=WINDOW_S)


def features(audio: np.ndarray) -> np.ndarray:
    """The model's input for an utterance (16 kHz mono float): shape (1, 80, 800), float32."""
    n = WINDOW_S * RATE
    x = np.asarray(audio, np.float32)[-n:]
    if len(x) < n:
        x = np.concatenate([np.zeros(n - len(x), np.float32), x])
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)
    mel = _extractor()(x, padding=0)  # reflect-padded STFT, last frame dropped: 800 frames
    return np.asarray(mel, np.float32)[None, :, :FRAMES]


class TurnModel:
    """Smart Turn v3.2 in one ONNX Runtime session on one thread, with a thread of its own so
    a check never waits behind the STT nor blocks the event loop."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4
        self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="turn")
        self.check_ms: collections.deque[float] = collections.deque(maxlen=1000)  # for benchmarks

    def probability(self, audio: np.ndarray) -> float:
        """How sure the model is that the utterance is a finished turn (0-1)."""
        (out,) = self._session.run(None, {"input_features": features(audio)})
        return float(np.asarray(out).reshape(-1)[0])

    async def check(self, audio: np.ndarray) -> float:
        """:meth:`probability` in the model's own thread; ``check_ms`` keeps how long each took
        from asking to answer (queueing included)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        p = await loop.run_in_executor(self._executor, self.probability, audio)
        self.check_ms.append((time.perf_counter() - started) * 1000)
        return p

    def warm_up(self) -> None:
        """The first run allocates; do it before the first pause."""
        self.probability(np.zeros(RATE, np.float32))


def load_turn_model(bundle: Bundle = SMART_TURN) -> TurnModel | None:
    """The turn model, verified and warmed up, or None with a warning saying how to get it:
    voxloop then ends turns on silence and the words alone, as it did before."""
    try:
        path = ready(bundle)
    except ModelNotFoundError as exc:
        path_in_package = part_path(bundle, 0)
        if path_in_package is None or not path_in_package.is_file():
            log.warning(
                "The turn model is not installed (%s missing); turns end on silence and words alone. "
                "Install it: %s",
                bundle.parts[0].package,
                bundle.install,
            )
        else:
            log.warning("%s Until then turns end on silence and words alone.", exc)
        return None
    model = TurnModel(path)
    model.warm_up()
    return model


@functools.cache
def shared_turn_model() -> TurnModel | None:
    """One turn model per process, shared by every conversation (``voxloop serve`` runs many);
    loaded, or found missing and warned about, once."""
    return load_turn_model(SMART_TURN)


def words_finished(text: str) -> bool:
    """The words' cue, strict enough to let the voice end a turn 0.2 s into a pause: they sound
    finished (``reply.sounds_finished``), and would without Whisper's closing "?" or "." too
    ("Could you find me a recipe for?" is not a question yet)."""
    bare = text.rstrip().rstrip("?!.")
    return sounds_finished(text) and sounds_finished(bare + ".")


@runtime_checkable
class TurnAware(Protocol):
    """An endpointer that weighs the turn model's answer for a pause it reported."""

    def turn(self, pause: SpeechEnded, probability: float) -> None: ...


__all__ = [
    "SMART_TURN",
    "TurnAware",
    "TurnModel",
    "features",
    "load_turn_model",
    "shared_turn_model",
    "words_finished",
]
