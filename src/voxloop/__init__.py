"""voxloop: a real-time, fully offline voice assistant."""

__version__ = "0.1.0"
