"""The built-in tools: the clock and an exact calculator. (Timers live in ``timers.py``: they
belong to a conversation, which they speak up in.)"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from voxloop.tools import Tool, tool


@tool(doing="read the clock")
def get_time() -> dict[str, str]:
    """The current local time, date and weekday: for any question about them."""
    now = datetime.now().astimezone()
    hour = now.hour % 12 or 12
    return {
        "time": f"{hour}:{now.minute:02d} {'AM' if now.hour < 12 else 'PM'}",
        "time_24h": now.strftime("%H:%M"),
        "date": f"{now.strftime('%A')}, {now.strftime('%B')} {now.day}, {now.year}",
        "timezone": now.tzname() or "local time",
    }


# -- the calculator ---------------------------------------------------------------------------
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
    "sin": lambda x: math.sin(math.radians(x)),
    "cos": lambda x: math.cos(math.radians(x)),
    "tan": lambda x: math.tan(math.radians(x)),
    "log": math.log10,
    "ln": math.log,
    "exp": math.exp,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_WORDS = {
    "plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "x": "*", "×": "*", "÷": "/",
    "divided by": "/", "over": "/", "to the power of": "**", "^": "**", "mod": "%", "modulo": "%",
    "percent of": "/100*", "%of": "/100*",
}  # fmt: skip
MAX_EXPONENT = 1000
MAX_DIGITS = 60


# Spelled numbers, for the calculator and for requests heard in words ("five minutes").
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_ONES = {w: i for i, w in enumerate(NUMBER_WORDS)}
_TENS = TENS
_SCALES = {"thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_NUMBER_WORDS = re.compile(
    r"\b(?:(?:" + "|".join([*_ONES, *_TENS, "hundred", *_SCALES]) + r")(?:[ -]+(?:and[ -]+)?|\b))+",
    re.IGNORECASE,
)


def words_value(words: str) -> int:
    """ "twenty one" -> 21, "one hundred and five" -> 105, "three thousand" -> 3000."""
    total = current = 0
    for word in re.split(r"[ -]+", words.lower()):
        if word in _ONES:
            current += _ONES[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total += max(current, 1) * _SCALES[word]
            current = 0
    return total + current


def words_to_digits(text: str) -> str:
    """Spelled numbers as digits: "seven plus twenty one" -> "7 plus 21"."""

    def digits(match: re.Match[str]) -> str:
        run = match.group(0)
        trail = run[len(run.rstrip(" -")) :]
        return f"{words_value(run.rstrip(' -').removesuffix(' and'))}{trail}"

    return _NUMBER_WORDS.sub(digits, text)


def _normalize(expression: str) -> str:
    text = words_to_digits(expression.lower().replace(",", "")).strip().rstrip("=?").strip()
    for word in sorted(_WORDS, key=len, reverse=True):
        if word.isalpha() or " " in word:
            text = text.replace(f" {word} ", f" {_WORDS[word]} ")
        else:
            text = text.replace(word, _WORDS[word])
    return text


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression, computed exactly in Python (no names, no calls
    but a few math functions, bounded powers): never ``eval``."""
    try:
        tree = ast.parse(_normalize(expression), mode="eval")
    except SyntaxError:
        raise ValueError(f"{expression!r} is not a sum I can work out") from None

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
                raise ValueError("that power is too large")
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
                raise ValueError("it divides by zero")
            return _BINARY[type(node.op)](left, right)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return _FUNCTIONS[node.func.id](*(value(a) for a in node.args))
        raise ValueError(f"{expression!r} is not a sum I can work out")

    result = value(tree)
    if isinstance(result, float):
        if not math.isfinite(result):
            raise ValueError("the result is not a finite number")
        if result.is_integer() and abs(result) < 1e15:
            return int(result)
        return float(f"{result:.10g}")
    if len(str(abs(result))) > MAX_DIGITS:
        raise ValueError("the result is too long to say")
    return int(result)


@tool(doing="work that out")
def calculate(expression: str) -> dict[str, Any]:
    """Exact arithmetic: use it for every calculation.

    Args:
        expression: e.g. "37 * 43"
    """
    return {"expression": expression, "result": evaluate(expression)}


BUILTIN: tuple[Tool, ...] = (get_time, calculate)
