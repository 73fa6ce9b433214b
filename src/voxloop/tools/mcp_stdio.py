"""MCP servers over stdio as voxloop tools (the official ``mcp`` SDK, ``pip install voxloop[mcp]``).

Each server named in ``tools.mcp`` (``"NAME=COMMAND ARG…"``) is started when a conversation
starts and stopped when it ends; its tools are offered to the model under their own names, and
a call goes to the server with the model's arguments. A server that does not start, or a call
that fails, is said in one sentence, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from typing import Any

from voxloop.errors import ConfigError
from voxloop.tools import Tool

log = logging.getLogger(__name__)


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """``"NAME=COMMAND ARG…"`` -> (NAME, [COMMAND, ARG…])."""
    name, sep, command = spec.partition("=")
    argv = shlex.split(command) if sep else []
    if not name.strip() or not argv:
        raise ConfigError(
            f'tools.mcp entry {spec!r} is not NAME=COMMAND: give e.g. "notes=python -m my_notes_server".'
        )
    return name.strip(), argv


def _field(obj: Any, *names: str) -> Any:
    """A field by its MCP SDK 2 name or its SDK 1 (camelCase) one."""
    return next((getattr(obj, n) for n in names if getattr(obj, n, None) is not None), None)


def _text(result: Any) -> str:
    """What a CallToolResult says: its text parts, or its structured content."""
    parts = [getattr(c, "text", "") for c in getattr(result, "content", None) or []]
    text = "\n".join(p for p in parts if p)
    structured = _field(result, "structured_content", "structuredContent")
    if not text and structured is not None:
        import json

        return json.dumps(structured, ensure_ascii=False, default=str)
    return text


class McpServers:
    """The stdio MCP servers of one conversation; enter it in the task that runs the
    conversation (the SDK's streams are bound to the task that opened them)."""

    def __init__(self, specs: tuple[str, ...]) -> None:
        self.specs = [parse_spec(s) for s in specs]
        self.tools: list[Tool] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> McpServers:
        if not self.specs:
            return self
        try:
            from mcp import ClientSession, StdioServerParameters
            from mcp.client.stdio import stdio_client
        except ImportError:
            raise ConfigError(
                "tools.mcp names MCP servers, but the MCP SDK is not installed: pip install 'voxloop[mcp]'."
            ) from None
        for name, argv in self.specs:
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
            # Each server on a stack of its own: one that fails to start is closed at once, and
            # the others go on.
            stack = contextlib.AsyncExitStack()
            try:
                read, write = await stack.enter_async_context(stdio_client(params))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                listed = await session.list_tools()
                tools = [self._tool(name, session, entry) for entry in listed.tools]
            except Exception as exc:  # a server that will not start must not stop the conversation
                with contextlib.suppress(Exception):
                    await stack.aclose()
                log.warning(
                    "MCP server %s (%s) did not start: %s; going on without it.", name, shlex.join(argv), exc
                )
                continue
            self._stack.push_async_exit(stack)
            self.tools += tools
            log.info("MCP server %s: tools %s", name, ", ".join(t.name for t in tools))
        return self

    @staticmethod
    def _tool(server: str, session: Any, entry: Any) -> Tool:
        async def call(**arguments: Any) -> str:
            result = await session.call_tool(entry.name, arguments)
            if _field(result, "is_error", "isError"):
                raise RuntimeError(_text(result) or "the tool reported an error")
            return _text(result)

        schema = dict(_field(entry, "input_schema", "inputSchema") or {"type": "object", "properties": {}})
        description = entry.description or f"{entry.name} (from the MCP server {server})"
        return Tool(
            entry.name, description, schema, call, acts=True, doing=f"use {entry.name.replace('_', ' ')}"
        )

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()
