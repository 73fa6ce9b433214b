"""Interim transcripts on a second Whisper instance that only gets the CPU nobody else wants.

Why: while the user talks, voxloop transcribes what it has heard so far once a second (the
``partial`` events). On one shared model, a partial still running when the user stops holds up
the transcript that matters, for up to a whole encoder and decoder pass (~300 ms on a 7 s
utterance on 2 cores). Here partials run on their own copy of the model (tiny.en: ~70 MB), one
thread, under Linux's ``SCHED_IDLE`` policy, so the turn's transcript never queues behind one
and takes the CPU from it at once when both run. Measured on 2 cores, a 7 s utterance's
transcript next to a looping partial: 343-368 ms (median), the same as alone (342-364 ms); at
``nice`` 19 instead, 479-592 ms, because a nice thread keeps the core for a few milliseconds
after the turn's transcript wakes up, and CTranslate2's two threads meet at a barrier after
every step.

CTranslate2 makes its worker threads when the model is loaded, and on Linux a new thread takes
its creator's scheduling policy and priority: so the model is loaded inside the idle-policy
thread. Where ``SCHED_IDLE`` is refused the thread falls back to ``nice`` 19; elsewhere than
Linux the priority stays as it is (both calls take a thread id only there).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from voxloop.settings import SttSettings
from voxloop.stt.whisper import WhisperTranscriber

log = logging.getLogger(__name__)

NICE = 19


def _lower_priority(nice: int) -> None:
    """Run the calling thread only on otherwise idle CPU (Linux: per thread; elsewhere left
    alone), or at least at ``nice``."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # e.g. a sandbox without the permission
        log.debug("cannot lower the interim transcripts' priority: %s", exc)


class InterimTranscriber:
    """A :class:`~voxloop.stt.Transcriber` for interim transcripts, on its own thread.

    ``executor`` is that thread: run :meth:`transcribe` there (it is the thread the model's
    worker threads were made from, and the only one that uses this copy of the model).
    """

    def __init__(self, settings: SttSettings, nice: int = NICE) -> None:
        self.executor: Executor = ThreadPoolExecutor(
            1, thread_name_prefix="stt-interim", initializer=_lower_priority, initargs=(nice,)
        )
        one_thread = dataclasses.replace(settings, threads=1)
        self._model = self.executor.submit(WhisperTranscriber, one_thread).result()

    def warm_up(self) -> None:
        self.executor.submit(self._model.warm_up).result()

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        return self._model.transcribe(audio, stop)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_interim(settings: SttSettings) -> InterimTranscriber | None:
    """The model copy for interim transcripts, or None to run them on the main model."""
    return InterimTranscriber(settings) if settings.interim_model else None
