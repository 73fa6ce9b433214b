"""Who has the floor while voxloop speaks: the reply's playback and the voice heard over it.

A voiced step over the reply pauses it at once (``HELD``), before anything is known of it; a
turn that starts over the reply keeps it paused until it is judged (``JUDGING``): enough voice,
or words that are more than a backchannel, make it an interruption (the reply is cut where it
was heard, :meth:`Floor.cut`); a cough, a click, an "uh-huh" let it go on from where it held
(:meth:`Floor.release`). One state, changed only by :meth:`Floor._to`, which checks the
transition, so a reply is never resumed twice or left paused for good.
"""

from __future__ import annotations

import enum
import logging

from voxloop.audio.sink import AudioSink

log = logging.getLogger(__name__)


class FloorState(enum.Enum):
    OPEN = "open"  # nothing heard over the reply (or no reply playing): it plays
    HELD = "held"  # a voiced step over the reply: paused, not yet a turn
    JUDGING = "judging"  # a turn started over the reply: paused until judged


_NEXT = {
    FloorState.OPEN: {FloorState.HELD, FloorState.JUDGING},
    FloorState.HELD: {FloorState.OPEN, FloorState.JUDGING},
    FloorState.JUDGING: {FloorState.OPEN},
}


class Floor:
    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self.state = FloorState.OPEN
        self.onset_s = 0.0  # where the voice being judged started, on the audio clock

    @property
    def judging(self) -> bool:
        return self.state is FloorState.JUDGING

    def hold(self) -> None:
        """A voiced step over the reply: pause it (only from OPEN)."""
        if self.state is FloorState.OPEN:
            self._to(FloorState.HELD)
            self.sink.pause()

    def judge(self, onset_s: float) -> None:
        """A turn started over the reply at ``onset_s``: keep the reply paused until judged."""
        if self.state is FloorState.OPEN:
            self.sink.pause()
        self._to(FloorState.JUDGING)
        self.onset_s = onset_s

    def release(self, why: str) -> None:
        """It was not an interruption: the reply plays on from where it held."""
        if self.state is not FloorState.OPEN:
            (log.info if self.judging else log.debug)("the reply goes on: %s", why)
            self._to(FloorState.OPEN)
            self.sink.resume()

    def cut(self) -> float:
        """It was an interruption (the caller flushes the reply, which ends the pause): where the
        voice started."""
        if self.state is not FloorState.OPEN:
            self._to(FloorState.OPEN)
        return self.onset_s

    def _to(self, state: FloorState) -> None:
        if state not in _NEXT[self.state]:
            raise RuntimeError(f"the floor cannot go from {self.state.value} to {state.value}")
        log.debug("floor: %s -> %s", self.state.value, state.value)
        self.state = state
