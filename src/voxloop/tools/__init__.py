"""Voice actions: functions the LLM may call during a turn (OpenAI's ``tools``/``tool_calls``).

A tool is a Python function with a typed signature and a docstring; :func:`tool` turns it into
the JSON schema the chat API takes. A :class:`Toolbox` holds the tools a conversation may use,
runs the calls the model asks for (off the event loop, with a time limit) and turns every way a
call can fail into a :class:`ToolFailure` with a sentence voxloop can say, never a crash.

Built-in tools (the clock, the calculator, timers) are on unless ``--no-tools`` or an allow
list says otherwise; tools that act on the world (plugins, MCP servers) are off until the user
names them in the config.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for: ``arguments`` is the JSON text it wrote."""

    id: str
    name: str
    arguments: str

    def message(self) -> dict[str, Any]:
        """The call as it goes back to the server in the assistant message."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class ToolFailure(Exception):
    """A call that could not be made or failed; ``spoken`` is what voxloop says instead."""

    def __init__(self, spoken: str, detail: str = "") -> None:
        super().__init__(detail or spoken)
        self.spoken = spoken


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments
    function: Callable[..., Any]  # sync (run in a thread) or async
    acts: bool = False  # acts on the world (a plugin, an MCP server): off until named
    doing: str = ""  # what it does, as in "Sorry, I could not <doing>"

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _json_type(hint: Any, where: str) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = typing.get_args(hint)
        return {"type": _JSON_TYPES[type(values[0])], "enum": list(values)}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _json_type(args[0], where)
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (str,)
        return {"type": "array", "items": _json_type(item, where)}
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    raise TypeError(
        f"{where}: a tool parameter must be str, int, float, bool, a Literal or a list, not {hint!r}"
    )


def _docs(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's first paragraph, and ``name: text`` lines under ``Args:``."""
    doc = inspect.getdoc(function) or ""
    head, _, args = doc.partition("Args:")
    described = {}
    for line in args.splitlines():
        if m := re.match(r"\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)", line):
            described[m.group(1)] = m.group(2).strip()
    return " ".join(head.split("\n\n")[0].split()), described


def tool(
    function: Callable[..., Any] | None = None, *, name: str = "", acts: bool = False, doing: str = ""
) -> Any:
    """``@tool`` (or ``@tool(name=..., acts=True)``): a typed, documented function becomes a
    :class:`Tool`, its JSON schema taken from the signature and the docstring."""

    def make(fn: Callable[..., Any]) -> Tool:
        where = f"tool {fn.__qualname__}"
        hints = typing.get_type_hints(fn)
        description, described = _docs(fn)
        if not description:
            raise TypeError(f"{where}: give it a docstring; the model reads it to know when to call it")
        properties: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(fn).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"{where}: *args and **kwargs cannot be described to a model")
            if pname not in hints:
                raise TypeError(f"{where}: parameter {pname!r} needs a type annotation")
            prop = _json_type(hints[pname], f"{where}, parameter {pname!r}")
            if pname in described:
                prop["description"] = described[pname]
            properties[pname] = prop
            if param.default is inspect.Parameter.empty:
                required.append(pname)
        parameters = {"type": "object", "properties": properties, "required": required}
        tool_name = name or fn.__name__
        return Tool(tool_name, description, parameters, fn, acts, doing or tool_name.replace("_", " "))

    return make(function) if function is not None else make


@dataclass
class Toolbox:
    """The tools one conversation may call, and the running of their calls."""

    tools: dict[str, Tool] = field(default_factory=dict)
    timeout_s: float = 10.0
    for_model: bool = True  # offered to the LLM to call (else only run on requests heard in words)

    @classmethod
    def of(cls, tools: Iterable[Tool], timeout_s: float = 10.0, for_model: bool = True) -> Toolbox:
        return cls({t.name: t for t in tools}, timeout_s, for_model)

    def __bool__(self) -> bool:
        return bool(self.tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    def offered(self) -> list[dict[str, Any]] | None:
        """The schemas a request carries as ``tools``: None when the model is offered none."""
        return self.schemas() if self.tools and self.for_model else None

    async def run(self, call: ToolCall) -> str:
        """The call's result as text for the model (JSON for anything but a string). Raises
        :class:`ToolFailure` for an unknown tool, bad arguments, an error or a time-out."""
        found = self.tools.get(call.name)
        if found is None:
            raise ToolFailure("Sorry, I tried to use a tool I don't have.", f"unknown tool {call.name!r}")
        sorry = f"Sorry, I could not {found.doing}"
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            raise ToolFailure(
                f"{sorry}: I got its details garbled.", f"arguments not JSON: {call.arguments!r}"
            ) from None
        if not isinstance(arguments, dict):
            raise ToolFailure(
                f"{sorry}: I got its details garbled.", f"arguments not an object: {arguments!r}"
            )
        try:
            bound = inspect.signature(found.function).bind(**arguments)
        except TypeError as exc:
            raise ToolFailure(f"{sorry}: I got its details wrong.", f"{call.name}: {exc}") from None
        log.info("tool %s(%s)", call.name, call.arguments)
        try:
            if inspect.iscoroutinefunction(found.function):
                work: Awaitable[Any] = found.function(*bound.args, **bound.kwargs)
            else:
                loop = asyncio.get_running_loop()
                work = loop.run_in_executor(
                    None, functools.partial(found.function, *bound.args, **bound.kwargs)
                )
            result = await asyncio.wait_for(work, self.timeout_s)
        except TimeoutError:
            raise ToolFailure(
                f"{sorry}: it took too long.", f"{call.name} timed out after {self.timeout_s:g} s"
            ) from None
        except ToolFailure:
            raise
        except Exception as exc:
            log.debug("tool %s failed", call.name, exc_info=True)
            reason = str(exc) or type(exc).__name__
            raise ToolFailure(
                f"{sorry}: {reason}.", f"{call.name} raised {type(exc).__name__}: {reason}"
            ) from None
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)


__all__ = ["Tool", "ToolCall", "ToolFailure", "Toolbox", "tool"]
