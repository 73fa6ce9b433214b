"""Interim transcripts in a process of their own that only gets the CPU nobody else wants, and is
frozen the moment the user pauses.

Why: while the user talks, voxloop transcribes what it has heard so far once a second (the
``partial`` events). A partial still running when the user stops holds up the transcript that
matters. Neither CTranslate2's encoder nor its decoder can be stopped half-way, and a thread
under Linux's ``SCHED_IDLE`` policy was not enough: a partial's decoder still running next to the
turn's transcript made that transcript's decoder 50-100% slower on 2 cores (297 and 426 ms
instead of ~200 ms on two long questions of the bench), although it only ran on the idle
moments of the turn's two threads. So partials run on their own copy of the model (tiny.en:
~70 MB) in a child process, on one thread, under ``SCHED_IDLE`` (or ``nice`` 19 where that is
refused), and when the user pauses voxloop sends the child ``SIGSTOP``: it holds no core at all
until the next partial is wanted (``SIGCONT``). What it was doing is finished then and thrown
away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from voxloop.children import in_child
from voxloop.errors import ModelNotFoundError
from voxloop.settings import SttSettings

log = logging.getLogger(__name__)

NICE = 19
START_TIMEOUT_S = 120.0
POLL_S = 0.005  # how often a waiting partial checks whether the user paused


def _lowest_priority(nice: int) -> None:
    """Every thread of this process (CTranslate2's workers included) only on otherwise idle
    CPU (Linux), or at least at ``nice``."""
    if not sys.platform.startswith("linux"):
        return
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:  # e.g. a sandbox without the permission
            log.debug("cannot lower the interim transcripts' priority: %s", exc)


class _Duplex:
    """Two one-way pipe ends as one connection."""

    def __init__(self, incoming: Connection, outgoing: Connection) -> None:
        self._in, self._out = incoming, outgoing

    def send(self, obj: Any) -> None:
        self._out.send(obj)

    def recv(self) -> Any:
        return self._in.recv()

    def poll(self, timeout: float) -> bool:
        return self._in.poll(timeout)

    def close(self) -> None:
        self._out.close()
        self._in.close()


def _serve(conn: _Duplex) -> None:
    """The child process: load the model, then transcribe each (seq, audio) it is sent."""
    from voxloop.stt.whisper import WhisperTranscriber

    settings, nice = conn.recv()
    try:
        model = WhisperTranscriber(settings)
        model.warm_up()
    except Exception as exc:
        conn.send(("error", str(exc)))
        return
    _lowest_priority(nice)  # after loading: the model's threads exist now, and start-up was quick
    conn.send(("ready", ""))
    while True:
        try:
            seq, audio = conn.recv()
        except (EOFError, OSError):
            return  # voxloop went away
        try:
            text = model.transcribe(audio)
        except Exception as exc:  # a partial is never worth more than a log line
            log.debug("interim transcript failed: %s", exc)
            text = ""
        conn.send((seq, text))


class InterimTranscriber:
    """A :class:`~voxloop.stt.Transcriber` for interim transcripts, in a child process.

    Run :meth:`transcribe` in ``executor`` (one thread, which only waits for the child). When
    ``stop`` says so, the call returns "" at once and the child is frozen where it is.
    """

    def __init__(self, settings: SttSettings, nice: int = NICE) -> None:
        # A fresh interpreter (no copy of voxloop's threads and locks, and unlike multiprocessing's
        # spawn it never re-runs the caller's main script), talking over a pipe pair.
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "voxloop.stt.interim", str(down_r), str(up_w)],
            pass_fds=(down_r, up_w),
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # its errors come back over the pipe
            # Killed with voxloop, however it dies: frozen (SIGSTOP) it would wait for ever.
            preexec_fn=in_child(0, with_parent=True),
        )
        os.close(down_r)
        os.close(up_w)
        self._conn = _Duplex(Connection(up_r, writable=False), Connection(down_w, readable=False))
        self._conn.send((dataclasses.replace(settings, threads=1), nice))
        self._frozen = False
        self._seq = 0
        self._lock = threading.Lock()
        self.executor: Executor = ThreadPoolExecutor(1, thread_name_prefix="stt-interim")
        try:
            if not self._conn.poll(START_TIMEOUT_S):
                raise ModelNotFoundError("The interim transcript model did not load in time.")
            kind, message = self._conn.recv()
        except (EOFError, OSError):
            kind, message = "error", f"its process ended (exit code {self._proc.poll()})"
        if kind == "error":
            self.close()
            raise ModelNotFoundError(f"Cannot load the interim transcript model: {message}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def warm_up(self) -> None:
        return None  # the child warmed its model up before it said it was ready

    def transcribe(self, audio: np.ndarray, stop: Callable[[], bool] | None = None) -> str:
        with self._lock:
            self._thaw()
            self._seq += 1
            seq = self._seq
            try:
                self._conn.send((seq, np.asarray(audio, np.float32)))
                while True:
                    if stop is not None and stop():
                        self._freeze()
                        return ""
                    if self._conn.poll(POLL_S):
                        done, text = self._conn.recv()
                        if done == seq:
                            return str(text)
                        # a partial from before a freeze, finished since: nobody wants it now
            except (EOFError, OSError) as exc:
                log.warning("interim transcripts stopped: %s", exc)
                return ""

    def _freeze(self) -> None:
        if not self._frozen and self._proc.poll() is None:
            os.kill(self.pid, signal.SIGSTOP)
            self._frozen = True

    def _thaw(self) -> None:
        if self._frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self._frozen = False

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._thaw()
        self._conn.close()  # the child sees the end of its input and exits
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            # On a box another program keeps busy, a process that runs only on idle CPU may
            # take a while even to die: it is killed, and voxloop does not wait for it.
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=2)


def make_interim(settings: SttSettings) -> InterimTranscriber | None:
    """The model copy for interim transcripts, or None to run them on the main model."""
    return InterimTranscriber(settings) if settings.interim_model else None


if __name__ == "__main__":  # the child: python -m voxloop.stt.interim READ_FD WRITE_FD
    _serve(
        _Duplex(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
    )
