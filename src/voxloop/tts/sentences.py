"""Cut a streaming reply into speakable sentences as soon as each one is complete.

The LLM streams tokens; the speaker should start on the first sentence while the rest is still
being generated. A sentence ends at ``.``, ``!``, ``?`` or ``…`` followed by whitespace (so
"3.5" and "e.g." mid-word do not cut), or at a line break. The first piece of a reply may also
end at a clause (``,`` ``;`` ``:`` ``—``) once it has two words, or after a one-word opener
("Sure,", "Oh,"): the listener hears the reply start sooner, and later pieces are whole
sentences for the best prosody. A first sentence that runs on without a comma is cut where a
phrase starts ("The tallest mountain | in the world"), once it has three words, or after ten:
on 2 cores the 1.5B model writes a word in ~45 ms, and each word the first piece waits for is
that much later first audio. Markdown that a small
model emits anyway (``**bold**``, ``# heading``, list bullets, backticks) is removed before
speaking.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)

_END = re.compile(r"([.!?…]+[\"'”’)\]]*)(\s+)|\n+")
_CLAUSE_OR_END = re.compile(r"([.!?…]+[\"'”’)\]]*|[,;:—])(\s+)|\n+")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "prof", "sr", "jr"}
# One-word openers a speaker pauses after ("Sure, ..."): the first piece may be just one of them.
_OPENERS = frozenset(
    {"sure", "okay", "ok", "well", "yes", "yeah", "no", "oh", "ah", "aw", "wow", "great", "right"}
    | {"absolutely", "certainly", "alright", "hello", "hi", "hey", "thanks", "indeed"}
)
# Words that start a phrase: the first piece may end before one ("...assist you | with ...").
_PHRASE_STARTS = frozenset(
    {"with", "to", "for", "and", "but", "or", "so", "because", "that", "which", "who", "when"}
    | {"where", "while", "if", "in", "on", "at", "of", "from", "about", "by", "as", "like", "than"}
    | {"into", "after", "before", "since", "until", "without", "through", "during"}
    | {"is", "was", "are", "were"}  # after a long subject: "The capital of Australia | is ..."
)
# "to" after these is a verb's own ("going to be"): no cut between them.
_BEFORE_INFINITIVE = frozenset(
    {"going", "want", "wants", "have", "has", "had", "need", "needs", "used", "able", "like"}
)
_MARKDOWN = re.compile(r"[*_`#>|~]+|^\s*(?:[-•]|\d+[.)])\s+", re.MULTILINE)


def speakable(text: str) -> str:
    """Text as it should be spoken: no markdown symbols, single spaces."""
    return re.sub(r"\s+", " ", _MARKDOWN.sub(" ", text)).strip()


class SentenceSplitter:
    def __init__(
        self,
        min_chars: int = 12,
        first_clause_words: int = 2,
        first_phrase_words: int = 3,
        first_max_words: int = 10,
        max_words: int = 40,
    ) -> None:
        self.min_chars = min_chars
        self.max_words = max_words  # a run-on stretch without a sentence end is cut here
        self.first_clause_words = first_clause_words
        self.first_phrase_words = first_phrase_words  # 0: the first piece is never cut mid-clause
        self.first_max_words = first_max_words
        self._buffer = ""
        self._first = bool(first_clause_words)
        # The first piece was cut mid-sentence: the rest of that sentence is a piece of its own,
        # however short ("in spring."), and is spoken as soon as it ends.
        self._rest = False

    def _cuts_here(self, candidate: str, mark: str) -> bool:
        if mark.startswith("\n"):
            return True
        words = candidate.rstrip().rstrip(".!?…\"'”’)],;:—").split()
        if not words or words[-1].lower() in _ABBREV:
            return False
        if self._first:
            if mark.strip()[:1] in {",", ";", ":", "—"}:
                opener = len(words) == 1 and words[0].lower() in _OPENERS
                return opener or len(words) >= self.first_clause_words
            return True  # "Sure!" may be spoken on its own
        return self._rest or len(candidate.strip()) >= self.min_chars

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the sentences it completed (maybe none)."""
        self._buffer += delta
        out: list[str] = []
        start = 0
        while True:
            pattern = _CLAUSE_OR_END if self._first else _END
            for m in pattern.finditer(self._buffer, start):
                if self._cuts_here(self._buffer[start : m.end()], m.group(0)):
                    text = speakable(self._buffer[start : m.end()])
                    start = m.end()
                    if text:
                        out.append(text)
                        self._rest = self._first and not _END.fullmatch(m.group(0))  # cut mid-sentence
                        if self._first:
                            self._first = False
                            break  # later pieces follow the sentence rules
            else:
                break
        self._buffer = self._buffer[start:]
        if self._first and self.first_phrase_words and (phrase := self._first_phrase()):
            out.append(phrase)
            self._first = False
            self._rest = True
            out += self.feed("")  # the rest may already hold a whole sentence
        while not self._first and (piece := self._run_on()):
            out.append(piece)
        return out

    def _run_on(self) -> str | None:
        """A piece of text that runs on without a sentence end (a model that never stops, a
        list without punctuation): its first ``max_words`` words, cut after the last comma in
        them if there is one, so the voice need not wait for the end of it all."""
        words = list(re.finditer(r"\S+", self._buffer))
        if len(words) <= self.max_words:
            return None
        head = words[: self.max_words]
        cut = next((w.end() for w in reversed(head) if w.group().endswith(",")), head[-1].end())
        text, self._buffer = speakable(self._buffer[:cut]), self._buffer[cut:]
        return text or None

    def _first_phrase(self) -> str | None:
        """The first piece cut before a phrase, when the first clause runs on (None: not yet)."""
        words = list(re.finditer(r"\S+", self._buffer))
        # The last word may still grow ("to" into "today"): the cut before it is a word boundary
        # all the same, and waiting for the next token to know costs ~40 ms of first audio.
        for i in range(self.first_phrase_words, len(words)):
            word = words[i].group().lower().strip("\"'“‘(),;:")
            phrase = word in _PHRASE_STARTS and not (
                word == "to" and words[i - 1].group().lower() in _BEFORE_INFINITIVE
            )
            if phrase or i >= self.first_max_words:
                cut = words[i].start()
                text, self._buffer = speakable(self._buffer[:cut]), self._buffer[cut:]
                return text or None
        return None

    def flush(self) -> list[str]:
        """The rest of the reply once the stream has ended."""
        text, self._buffer = speakable(self._buffer), ""
        return [text] if text else []


_LETTER_RUN = re.compile(r"([^\W\d_])\1{7}", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class LoopGuard:
    """Notices a reply that has fallen into a loop, which tiny models do ("I'm sorry, sorry,
    sorry, …" or the same sentence again and again), so the stream can be closed and the loop
    is neither spoken nor fed back into the history."""

    def __init__(self, max_run: int = 4) -> None:
        self.max_run = max_run
        self._sentences: set[tuple[str, ...]] = set()

    def repeats(self, sentence: str) -> bool:
        """True for a sentence already said in this reply."""
        key = tuple(_words(sentence))
        if not key:
            return False
        if key in self._sentences:
            return True
        self._sentences.add(key)
        return False

    def stuck(self, recent_text: str) -> bool:
        """True when the same word or two-word phrase repeats ``max_run`` times in a row, or one
        letter eight times ("YAYYYYYYYYYY…", which never reaches a sentence end)."""
        if _LETTER_RUN.search(recent_text):
            return True
        words = _words(recent_text)
        for size in (1, 2):
            tail = words[-size * self.max_run :]
            if len(tail) == size * self.max_run and all(tail[i] == tail[i % size] for i in range(len(tail))):
                return True
        return False


class SpokenReply:
    """A streamed reply turned into what is spoken, with voxloop's guards, for every place that
    voices an LLM: sentences as they complete, a stop when the reply loops or repeats a sentence
    (the rest is neither spoken nor kept), and voxloop's own budget of characters for a server
    that ignores max_tokens (what fits is spoken, the rest dropped)."""

    def __init__(self, budget_chars: int) -> None:
        self.budget = budget_chars
        self.text = ""
        self.stopped = ""  # why the stream should be closed now: "loop", "repeat", "budget"
        self._splitter = SentenceSplitter()
        self._guard = LoopGuard()

    def feed(self, delta: str) -> tuple[str, list[str]]:
        """The part of ``delta`` that is kept, and the sentences it completes. Once ``stopped``
        is set, the caller closes the stream (which stops generation on the server)."""
        piece = delta[: max(0, self.budget - len(self.text))]
        self.text += piece
        if self._guard.stuck(self.text[-120:]):
            log.info("reply stuck in a loop; stopped")
            self.stopped = "loop"
            return piece, []
        sentences: list[str] = []
        for sentence in self._splitter.feed(piece):
            if self._guard.repeats(sentence):
                log.info("reply repeats itself; stopped")
                self.stopped = "repeat"
                return piece, sentences
            sentences.append(sentence)
        if len(piece) < len(delta) or len(self.text) >= self.budget:
            log.info("reply over its budget of %d characters; stopped", self.budget)
            self.stopped = "budget"
        return piece, sentences

    def finish(self) -> list[str]:
        """What is left once the stream has ended: nothing after a loop or a repeat."""
        return [] if self.stopped in ("loop", "repeat") else self._splitter.flush()


async def spoken(
    stream: AsyncIterator[str], reply: SpokenReply, seen: Callable[[str], None] | None = None
) -> AsyncIterator[str]:
    """The sentences of a streamed reply as they complete; ``seen`` gets each piece of text
    kept (with "…" where the budget cut it). The stream is closed at the end, or at once on a
    stop, which stops generation on the server."""
    try:
        async for delta in stream:
            kept, sentences = reply.feed(delta)
            if seen is not None:
                seen(kept + ("…" if reply.stopped == "budget" else ""))
            for sentence in sentences:
                yield sentence
            if reply.stopped:
                break
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
    for sentence in reply.finish():
        yield sentence
