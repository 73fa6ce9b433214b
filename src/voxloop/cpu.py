"""One BLAS thread in voxloop's process, so that numpy never takes the cores from the stages.

numpy's OpenBLAS starts a thread per core for a product of any size (Whisper's mel filter bank,
80x201 by 201xN, is one, on every transcript) and lets those threads spin for a while after each
call. On a 2-core machine they then hold both cores while CTranslate2, the LLM server and the
TTS model want them. Measured there: Whisper's encoder on a 10 s window took 120 ms right after
its features were computed, 60 ms with one BLAS thread; ``voxloop bench`` went from 667 / 1067 ms
(p50 / p95, speech end to first audio) to 483 / 713 ms. No BLAS call of voxloop is big enough to
gain from a second thread.

Importing voxloop does it: ``OPENBLAS_NUM_THREADS=1`` when numpy is not loaded yet, and
threadpoolctl on the loaded BLAS libraries when it is. A value the user set is kept.
"""

from __future__ import annotations

import os
import sys


def one_blas_thread() -> None:
    """Limit BLAS to one thread in this process, unless the user chose otherwise."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    if "numpy" not in sys.modules:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
