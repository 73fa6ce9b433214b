"""Which tools a conversation offers the model: the settings' choice, the model's ability."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from voxloop.errors import ConfigError
from voxloop.llm import ChatModel
from voxloop.settings import ToolSettings
from voxloop.tools import Tool, Toolbox
from voxloop.tools.builtin import BUILTIN
from voxloop.tools.timers import Timers

log = logging.getLogger(__name__)


def builtin_tools(timers: Timers) -> tuple[Tool, ...]:
    return (*BUILTIN, *timers.tools())


def check_allow(settings: ToolSettings, builtins: Iterable[Tool]) -> None:
    """A name in ``tools.allow`` that is no built-in tool is a typo: say so before anything runs."""
    known = {t.name for t in builtins}
    unknown = sorted(set(settings.allow) - known)
    if unknown:
        raise ConfigError(
            f"Unknown tool(s) in tools.allow: {', '.join(unknown)}. Built-in tools: {', '.join(sorted(known))}."
        )


def check_tool_settings(settings: ToolSettings) -> None:
    """The tool settings' mistakes (a typo in ``allow``, a plugin not installed), said before
    anything starts: an LLM server takes seconds to a minute to load."""
    check_allow(settings, builtin_tools(Timers(lambda _: None)))
    if settings.enabled:
        plugin_tools(settings.plugins)


PLUGIN_GROUP = "voxloop.tools"


def plugin_tools(names: tuple[str, ...]) -> list[Tool]:
    """The tools of the plugins named (entry points in ``voxloop.tools``: a :class:`Tool`, made
    with ``@voxloop.tools.tool``, or a list of them)."""
    if not names:
        return []
    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    tools: list[Tool] = []
    for name in names:
        if name not in found:
            have = ", ".join(sorted(found)) or "none"
            raise ConfigError(f"No tool plugin named {name!r} is installed (installed: {have}).")
        try:
            loaded = found[name].load()
        except Exception as exc:
            raise ConfigError(f"Tool plugin {name!r} failed to load: {exc}. Fix or uninstall it.") from None
        items: Iterable[object] = [loaded] if isinstance(loaded, Tool) else loaded
        for item in items:
            if not isinstance(item, Tool):
                raise ConfigError(
                    f"Tool plugin {name!r} gave {item!r}, not a tool: decorate its functions with @voxloop.tools.tool."
                )
            tools.append(dataclasses.replace(item, acts=True))
    return tools


def conversation_toolbox(
    settings: ToolSettings, chat: ChatModel, timers: Timers, embedded: bool, more: Iterable[Tool] = ()
) -> Toolbox:
    """The tools for one conversation (empty: none at all): the built-in ones allowed, the named
    plugins', and ``more`` (an MCP server's); offered to the model as ``model_calls`` says."""
    builtins = builtin_tools(timers)
    check_allow(settings, builtins)
    if not settings.enabled:
        return Toolbox()
    tools = [t for t in builtins if not settings.allow or t.name in settings.allow]
    for_model = settings.model_calls == "on" or (
        settings.model_calls == "auto" and chat.takes_tools and not embedded
    )
    if settings.model_calls == "auto" and not for_model:
        log.info(
            "tools are not offered to %s: %s",
            chat.model,
            "an embedded preset" if embedded else "its template has none",
        )
    return Toolbox.of([*tools, *plugin_tools(settings.plugins), *more], settings.timeout_s, for_model)
