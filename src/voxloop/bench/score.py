"""Scoring what voxloop heard and said: word error rate, and whether a reply holds an answer.

Numbers count the same however they are written ("8", "eight", "8."), so spoken and written
answers compare fairly: both sides go through :func:`normalize` first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_UNITS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}


def _numbers(words: list[str]) -> list[str]:
    """Runs of number words become digits: "one hundred and five" -> "105", "twenty-one" ->
    "21"; a digit said after a digit starts a new number ("five five" -> "5 5"); "oh" alone
    stays a word."""
    out: list[str] = []
    total = current = 0
    run: list[str] = []
    last = ""  # the kind of the previous number word: unit, tens or scale

    def flush() -> None:
        nonlocal total, current, run, last
        if run:
            out.append("oh" if run == ["oh"] else str(total + current))
        total = current = 0
        run = []
        last = ""

    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in _UNITS and not (word == "oh" and not run):
            if last == "unit" or (last == "tens" and current % 10):
                flush()
            current += _UNITS[word]
            last = "unit"
        elif word in _TENS:
            if last in ("unit", "tens"):
                flush()
            current += _TENS[word]
            last = "tens"
        elif word in _SCALES and (run or word == "hundred"):
            scale = _SCALES[word]
            if scale == 100:
                current = max(current, 1) * 100
            else:
                total += max(current, 1) * scale
                current = 0
            last = "scale"
        elif word == "and" and run and (nxt in _UNITS or nxt in _TENS):
            continue  # "one hundred and five"
        else:
            flush()
            out.append(word)
            continue
        run.append(word)
    flush()
    return out


def normalize(text: str) -> str:
    """Lower case, no punctuation, numbers as digits ("1,000" and "one thousand" -> "1000")."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"(?<=\d)\.(?!\d)", " ", text)  # "8." at a sentence end
    text = re.sub(r"[-–—/]", " ", text)  # twenty-five, half-past
    text = re.sub(r"[^\w\s.']", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # keep 3.14, drop full stops
    text = text.replace("'", "")
    return " ".join(_numbers(text.split()))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after :func:`normalize` (edit distance over words / reference words)."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    if not ref:
        return 0.0 if not hyp else 1.0
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / len(ref)


def holds_answer(reply: str | None, groups: Sequence[Sequence[str]]) -> bool:
    """True when every group has one alternative in the reply (as a word prefix: "freez" finds
    "freezer"; "8" does not find "18" or "80")."""
    if not reply:
        return False
    text = normalize(reply)

    def found(alt: str) -> bool:
        alt = normalize(alt)
        tail = r"(?![\d.]\d|\d)" if alt[-1:].isdigit() else ""  # "8" is not "80" nor "8.5"
        return re.search(r"(?<![\w.])" + re.escape(alt) + tail, text) is not None

    return all(any(found(alt) for alt in group) for group in groups)


__all__ = ["holds_answer", "normalize", "wer"]
