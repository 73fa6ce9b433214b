"""What a finished turn leaves behind, decided and written in one place.

The words kept for the reply (all of it once heard; only what was heard of an interrupted one;
what was said before a failure, marked as cut), the conversation's history, the reply's WAV,
the turn's line in ``conversation.jsonl`` and the :class:`TurnDone` event that the printer,
``--json`` and the sockets show: all from one :meth:`TurnRecorder.record`, in that order, so
the history, the file and what the user saw never disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from voxloop.audio import save_wav
from voxloop.conversation import Conversation, ConversationLog
from voxloop.events import ErrorEvent, Event, SpeechEnded, TurnDone
from voxloop.reply import ReplyResult

CUT = "…"  # marks a reply kept only in part


def turn_timings(
    r: ReplyResult, speech: SpeechEnded, started_audio_s: float, first_audio_at_s: float | None
) -> dict[str, float]:
    """Each stage's time (ms), on the audio clock where it spans the user's speech."""
    timings = {
        "endpoint_wait_ms": (speech.endpoint_at_s - speech.end_s) * 1000,
        "stt_ms": r.stt_ms,
        "llm_total_ms": r.llm_total_ms,
        "tts_ms": r.tts_ms,
        # How long before the end of the turn was known the reply was already being made.
        "head_start_ms": max(0.0, (speech.endpoint_at_s - started_audio_s) * 1000),
    }
    for key, value in (
        ("llm_first_token_ms", r.llm_first_token_ms),
        ("first_sentence_ms", r.first_sentence_ms),
        ("first_tts_ms", r.first_tts_ms),
    ):
        if value is not None:
            timings[key] = value
    if first_audio_at_s is not None:
        timings["speech_end_to_first_audio_ms"] = (first_audio_at_s - speech.end_s) * 1000
    return timings


def kept_reply(r: ReplyResult, interrupted: bool) -> str:
    """The reply as the history keeps it: what was heard of it, marked where it was cut."""
    said = " ".join(r.sentences)
    if interrupted:
        return said or CUT  # talked over before its first words: the turn still happened
    if r.error:
        return f"{said} {CUT}" if said else ""
    return said


class TurnRecorder:
    """Numbers the turns and writes each one everywhere it goes; ``done`` is every turn so far."""

    def __init__(
        self,
        conversation: Conversation,
        output_dir: Path | None,
        sample_rate: int,
        emit: Callable[[Event], None],
    ) -> None:
        self.conversation = conversation
        # conversation.jsonl and the reply WAVs beside it (None: nothing saved)
        self.log = ConversationLog(output_dir) if output_dir is not None else None
        self.sample_rate = sample_rate
        self._emit = emit
        self.done: list[TurnDone] = []

    def record(
        self,
        r: ReplyResult,
        speech: SpeechEnded,
        started_audio_s: float,
        first_audio_at_s: float | None,
        interrupted: bool,
        taken_back: bool = False,
    ) -> TurnDone:
        """One turn with words heard: keep it, save it, show it. A turn ``taken_back`` (cut
        before any of its reply was heard, its words said again with the next turn) keeps no
        reply and stays out of the history."""
        index = len(self.done) + 1
        timings = turn_timings(r, speech, started_audio_s, first_audio_at_s)
        if interrupted:
            timings["interrupted"] = 1.0
        if r.error:
            self._emit(ErrorEvent(f"Turn {index} got no complete reply: {r.error}"))
        assistant = "" if taken_back else kept_reply(r, interrupted)
        audio_path = None
        if assistant:
            self.conversation.add(r.user, assistant, tuple(r.steps))
            if self.log is not None and r.audio:
                # Numbered after the turns an earlier run left in the same folder: its log
                # lines still name their WAVs.
                wav = self.log.path.parent / f"turn-{self.log.earlier_turns + index:03d}.wav"
                audio_path = str(save_wav(wav, np.concatenate(r.audio), self.sample_rate))
        turn = TurnDone(
            index=index,
            user=r.user,
            assistant=assistant or None,
            reply_audio=audio_path,
            timings=timings,
            error=r.error,
            interrupted=interrupted,
            speech_end_s=speech.end_s,
            first_audio_at_s=first_audio_at_s,
            tools=tuple(r.tools),
        )
        if self.log is not None:
            self.log.append(turn.to_dict())
        self._emit(turn)
        self.done.append(turn)
        return turn
