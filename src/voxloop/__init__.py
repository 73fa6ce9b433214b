"""voxloop: a real-time, fully offline voice assistant."""

from voxloop.cpu import one_blas_thread

__version__ = "0.1.0"

one_blas_thread()
