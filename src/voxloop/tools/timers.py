"""Timers: set, list and cancel by voice; when one rings, the conversation speaks up.

A conversation owns its :class:`Timers` (each a task it cancels and awaits when it ends); a
timer that rings calls ``ring`` with the sentence to say, and the conversation voices it
between turns (``voxloop chat`` on a microphone or in real time, ``voxloop serve`` sessions).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from voxloop.tools import Tool, tool

MAX_TIMER_S = 24 * 3600


def duration(seconds: float, adjective: bool = False) -> str:
    """3 -> "3 seconds", 90 -> "1 minute 30 seconds", 5400 -> "1 hour 30 minutes"; as an
    adjective ("a 3 second timer") the units stay singular."""
    total = round(seconds)
    parts = []
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        n, total = divmod(total, size)
        if n:
            parts.append(f"{n} {unit}{'s' if n != 1 and not adjective else ''}")
    return " ".join(parts) or ("0 second" if adjective else "0 seconds")


@dataclass
class Timer:
    number: int
    label: str
    seconds: float
    ends_wall: float  # time.time()
    task: asyncio.Task[None]

    @property
    def name(self) -> str:
        return f"{self.label} timer" if self.label else f"{duration(self.seconds, adjective=True)} timer"

    def describe(self) -> dict[str, Any]:
        left = max(0.0, self.ends_wall - time.time())
        return {"number": self.number, "name": self.name, "time_left": duration(left)}


class Timers:
    def __init__(self, ring: Callable[[str], None]) -> None:
        self.ring = ring
        self.running: dict[int, Timer] = {}
        self._numbers = itertools.count(1)

    async def _wait(self, number: int, seconds: float) -> None:
        await asyncio.sleep(seconds)
        timer = self.running.pop(number)
        self.ring(f"Your {timer.name} is done.")

    def tools(self) -> tuple[Tool, ...]:
        """``set_timer``, ``list_timers`` and ``cancel_timer``, on these timers."""

        @tool(doing="set that timer")
        async def set_timer(
            hours: float = 0, minutes: float = 0, seconds: float = 0, label: str = ""
        ) -> dict[str, Any]:
            """Start a countdown timer; it is announced when done.

            Args:
                label: what it is for (optional)
            """
            total = float(hours) * 3600 + float(minutes) * 60 + float(seconds)
            if not 1 <= total <= MAX_TIMER_S:
                raise ValueError("a timer must last between one second and one day")
            number = next(self._numbers)
            task = asyncio.create_task(self._wait(number, total))
            timer = Timer(number, label.strip(), total, time.time() + total, task)
            self.running[number] = timer
            ends = datetime.now().astimezone() + timedelta(seconds=total)
            return {"set": timer.name, "rings_at": ends.strftime("%H:%M:%S")}

        @tool(doing="list the timers")
        async def list_timers() -> dict[str, Any]:
            """The running timers and the time left on each."""
            return {"timers": [t.describe() for t in self.running.values()]}

        @tool(doing="cancel that timer")
        async def cancel_timer(label: str = "", number: int = 0) -> dict[str, Any]:
            """Cancel a running timer (by label or number; none: the only one)."""
            chosen = [
                t
                for t in self.running.values()
                if (number and t.number == number) or (label and label.lower() in t.name.lower())
            ]
            if not number and not label:
                chosen = list(self.running.values())
            if not chosen:
                raise ValueError("there is no such timer running")
            if len(chosen) > 1:
                raise ValueError(f"{len(chosen)} timers are running; say which one")
            timer = self.running.pop(chosen[0].number)
            timer.task.cancel()
            return {"cancelled": timer.name}

        return (set_timer, list_timers, cancel_timer)

    async def aclose(self) -> list[str]:
        """Cancel the timers still running (the conversation ends); returns their names."""
        left = list(self.running.values())
        self.running.clear()
        for timer in left:
            timer.task.cancel()
        for timer in left:
            with contextlib.suppress(asyncio.CancelledError):
                await timer.task
        return [t.name for t in left]
