"""Child processes voxloop starts (the embedded LLM server, the interim-transcript worker):
how each is set up before it runs, so that it never outlives voxloop."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def in_child(nice: int, with_parent: bool) -> Callable[[], None] | None:
    """What the server's process does before it runs: a lower priority, and for a server that
    lives only as long as the command (``with_parent``) a kernel promise that it is killed when
    voxloop dies, however it dies: ``kill -9`` or the OOM killer leave no handler to stop it, and
    it would go on holding its model's memory and its port. Linux's ``PR_SET_PDEATHSIG`` ties it to
    the thread that starts it: voxloop starts it from the main thread, or restarts it from
    :class:`EmbeddedServer`'s watcher, which lives as long as it. (psutil, and subprocess itself,
    cannot set it.)"""
    prctl = None
    if with_parent and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: not after fork
    if nice <= 0 and prctl is None:
        return None
    parent = os.getpid()
    kill = ctypes.c_ulong(signal.SIGKILL)

    def setup() -> None:
        if nice > 0:
            # Below voxloop's own STT and TTS, which are short and on the critical path: a reply
            # that is still being generated can wait a few ms; the first sentence's audio cannot.
            os.nice(min(19, nice))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, kill)
            if os.getppid() != parent:  # voxloop died before the promise was made
                os.kill(os.getpid(), signal.SIGKILL)

    return setup
