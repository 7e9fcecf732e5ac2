"""The demo MCP server: context tools over an in-memory store, on Streamable HTTP.

It is the upstream the gateway's MCP support is tested against and `make run`
routes to, so it is a real MCP implementation the project did not write: the
official Python SDK (`mcp` 2.3.0, `MCPServer`), with only the tools here.

    .venv/bin/python services/mcp-demo/server.py --listen 127.0.0.1:8090 --stateful

Context documents are keyed by context path (`projects/engineering/roadmap`),
the paths the gateway authorises tool calls against. Tools: `search_context`,
`read_context`, `write_context`, `traverse_context` (streams one progress
notification and one log message per document it visits, `--event-delay-ms`
apart). Resource template `ctx://{+path}`, prompt `summarize_context`.

Sessions: the SDK routes each request by its `MCP-Protocol-Version` header.
2026-07-28 requests are self-contained (no `initialize`, no session) in
either mode. Requests of the 2025 revisions go through the `initialize`
handshake; `--stateful` gives each such client an `Mcp-Session-Id`, the
default (stateless) serves every request on its own and issues none.

No token is needed: the gateway in front does auth. What each request
arrived with is recorded, never its secrets: every tool result's
`structuredContent.received` says whether an `Authorization` header got
through (not its value) and echoes the identity headers the gateway sets
(`x-context-tenant`, `x-context-subject`), and every HTTP request is logged
on stderr as one line, `mcp-demo request {json}`, for the e2e harness.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import INVALID_PARAMS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The SDK derives output schemas with pydantic, which needs typing_extensions'
# TypedDict (not typing's) before Python 3.12.
from typing_extensions import TypedDict

SEED_DOCUMENTS: dict[str, str] = {
    "projects/engineering/roadmap": "Q3: ship MCP-aware routing. Q4: multi-region context replication.",
    "projects/engineering/architecture": "Envoy in front, context store behind, filters in wasm.",
    "projects/engineering/notes": "Weekly sync notes: the gateway owns auth, upstreams trust its headers.",
    "projects/engineering/incidents/2024-q3": "One outage: the rate-limit service was unreachable for 4 minutes.",
    "projects/marketing/launch-plan": "Launch the context platform at the developer conference.",
    "projects/marketing/brand": "Voice: precise, calm, no hype.",
    "teams/platform/oncall": "Primary: alice. Secondary: bob. Escalation: the platform channel.",
    "users/alice/preferences": "Prefers summaries under 100 words.",
}

# A context path: segments of letters, digits, `.`, `_`, `-`, joined by `/`.
# No empty, `.` or `..` segment: the path the gateway authorised is the
# document this server touches, with no second reading of it.
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

# Hosts the SDK's DNS-rebinding check accepts: its own localhost defaults
# (which require a port) plus the same names without one, which is how the
# gateway's test clients send `Host`. More with `--allowed-host`.
_LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


class Received(TypedDict):
    """What this request arrived with: for tests of what the gateway forwards."""

    authorization: bool
    tenant: str | None
    subject: str | None
    session_id: str | None
    protocol_version: str | None


class Match(TypedDict):
    path: str
    snippet: str


class SearchResult(TypedDict):
    path: str
    query: str
    matches: list[Match]
    received: Received


class ReadResult(TypedDict):
    path: str
    content: str
    received: Received


class WriteResult(TypedDict):
    path: str
    created: bool
    bytes: int
    received: Received


class TraverseResult(TypedDict):
    path: str
    depth: int
    visited: list[str]
    received: Received


def is_canonical(path: str) -> bool:
    return all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in path.split("/"))


def tool_path(path: str) -> str:
    """`path` if it is a canonical context path; else the tool call fails."""
    if not is_canonical(path):
        raise ToolError(f"invalid context path {path!r}: expected segments like projects/engineering/roadmap")
    return path


def is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def depth_below(path: str, root: str) -> int:
    return path.count("/") - root.count("/")


def received(headers: Mapping[str, str] | None) -> Received:
    headers = headers or {}
    return Received(
        authorization="authorization" in headers,
        tenant=headers.get("x-context-tenant"),
        subject=headers.get("x-context-subject"),
        session_id=headers.get("mcp-session-id"),
        protocol_version=headers.get("mcp-protocol-version"),
    )


def snippet(content: str, query: str) -> str:
    at = content.lower().find(query.lower())
    start = max(at - 30, 0)
    return content[start : at + len(query) + 30]


def build_server(store: dict[str, str], event_delay: float) -> MCPServer:
    """The MCP server: tools, resource template and prompt over `store`."""
    mcp = MCPServer(
        "ctxgate-mcp-demo",
        version="0.1.0",
        instructions="Context documents keyed by context path, e.g. projects/engineering/roadmap.",
        log_level="WARNING",
    )

    @mcp.tool()
    def search_context(path: str, query: str, ctx: Context) -> SearchResult:
        """Search the documents at and below a context path for a text (case-insensitive)."""
        root = tool_path(path)
        matches = [
            Match(path=p, snippet=snippet(content, query))
            for p, content in sorted(store.items())
            if is_under(p, root) and query.lower() in content.lower()
        ]
        return SearchResult(path=root, query=query, matches=matches, received=received(ctx.headers))

    @mcp.tool()
    def read_context(path: str, ctx: Context) -> ReadResult:
        """Read the context document at a path."""
        key = tool_path(path)
        if key not in store:
            raise ToolError(f"no context document at {key}")
        return ReadResult(path=key, content=store[key], received=received(ctx.headers))

    @mcp.tool()
    def write_context(path: str, content: str, ctx: Context) -> WriteResult:
        """Create or replace the context document at a path."""
        key = tool_path(path)
        created = key not in store
        store[key] = content
        return WriteResult(path=key, created=created, bytes=len(content.encode()), received=received(ctx.headers))

    @mcp.tool()
    async def traverse_context(path: str, depth: int, ctx: Context) -> TraverseResult:
        """Walk the documents at and up to `depth` levels below a path, streaming one event per document.

        Each visit sends a progress notification (if the request carries a
        progress token) and an info log message, then waits the server's
        event delay, so the response is an SSE stream that arrives over time.
        """
        root = tool_path(path)
        if depth < 0:
            raise ToolError("depth must be 0 or more")
        visited = [p for p in sorted(store, key=lambda p: (p.count("/"), p)) if is_under(p, root)]
        visited = [p for p in visited if depth_below(p, root) <= depth]
        for done, visit in enumerate(visited, start=1):
            await ctx.report_progress(done, len(visited), f"visited {visit}")
            await ctx.info({"visited": visit, "step": done, "of": len(visited)})
            await anyio.sleep(event_delay)
        return TraverseResult(path=root, depth=depth, visited=visited, received=received(ctx.headers))

    @mcp.resource("ctx://{+path}", name="context", mime_type="text/markdown")
    def context_document(path: str) -> str:
        """A context document by path, e.g. ctx://projects/engineering/roadmap."""
        if not is_canonical(path) or path not in store:
            raise ResourceNotFoundError(f"no context document at {path}")
        return store[path]

    @mcp.prompt()
    def summarize_context(path: str) -> str:
        """Ask for a summary of the context document at a path."""
        if not is_canonical(path) or path not in store:
            raise MCPError(code=INVALID_PARAMS, message=f"no context document at {path}")
        return f"Summarize the context document {path} in three sentences.\n\n{store[path]}"

    return mcp


def log_line(kind: str, fields: Mapping[str, Any]) -> None:
    """One line on stderr, flushed: `mcp-demo <kind> {json}`."""
    print(f"mcp-demo {kind} {json.dumps(fields, separators=(',', ':'))}", file=sys.stderr, flush=True)


def describe_request(scope: Scope, body: bytes) -> dict[str, Any]:
    """The log record of one HTTP request: its JSON-RPC method and tool, and which headers arrived."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    message: Any = None
    with contextlib.suppress(ValueError):
        message = json.loads(body) if body else None
    params = message.get("params") if isinstance(message, dict) else None
    params = params if isinstance(params, dict) else {}
    record: dict[str, Any] = {
        "http": scope["method"],
        "path": scope["path"],
        "rpc": message.get("method") if isinstance(message, dict) else None,
        "name": params.get("name") or params.get("uri"),
        # The routing tags a gateway in front set (ctxgate's tagging stage).
        "tag_method": headers.get("x-mcp-method"),
        "tag_tool": headers.get("x-mcp-tool"),
    }
    record.update(received(headers))
    return record


def request_log(app: ASGIApp, on_ready: Callable[[], None]) -> ASGIApp:
    """ASGI wrapper: logs each HTTP request in one line, and calls `on_ready` once the app has started.

    The body is read here (up to the SDK's own limit) to name the JSON-RPC
    method, then replayed to the app unchanged.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, announce_startup(send, on_ready))
            return
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body, pending = await read_body(receive, DEFAULT_MAX_REQUEST_BODY_SIZE)
        log_line("request", describe_request(scope, body))
        await app(scope, replay(body, pending, receive), send)

    return wrapped


def announce_startup(send: Send, on_ready: Callable[[], None]) -> Send:
    async def forward(message: Message) -> None:
        await send(message)
        if message["type"] == "lifespan.startup.complete":
            on_ready()

    return forward


async def read_body(receive: Receive, limit: int) -> tuple[bytes, list[Message]]:
    """The request body (as far as `limit`) and the messages read that still belong to the app."""
    body = bytearray()
    while len(body) <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return bytes(body), [message]
        body.extend(message.get("body", b""))
        if not message.get("more_body", False):
            return bytes(body), []
    # Over the limit: the SDK answers 413 from what it is handed.
    return bytes(body), []


def replay(body: bytes, pending: Iterable[Message], receive: Receive) -> Receive:
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": False}, *pending]

    async def next_message() -> Message:
        return queue.pop(0) if queue else await receive()

    return next_message


def parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--listen", type=parse_listen, default=("127.0.0.1", 8090), help="HOST:PORT (port 0: any free port)"
    )
    parser.add_argument(
        "--stateful", action="store_true", help="issue Mcp-Session-Id to 2025-revision clients (default: stateless)"
    )
    parser.add_argument(
        "--event-delay-ms", type=int, default=100, help="delay between traverse_context events (default 100)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="also accept this Host header (DNS-rebinding check; localhost names are accepted)",
    )
    return parser.parse_args(argv)


def transport_security(extra_hosts: list[str]) -> TransportSecuritySettings:
    hosts = [*_LOCAL_HOSTS, *(f"{h}:*" for h in _LOCAL_HOSTS), *extra_hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}:*" for h in _LOCAL_HOSTS],
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Log messages are deprecated from 2026-07-28 on (still sent to requests
    # that opt in), and part of the 2025 revisions: say it once, here.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    host, port = args.listen
    # Bound here, before the app starts, so `--listen HOST:0` can report the port it got.
    # TCP_NODELAY on every connection: the server writes a response's headers and
    # each SSE event separately, and with Nagle's algorithm a write waits for the
    # ACK of the previous one, which a peer in delayed-ACK mode (Envoy's pooled
    # upstream connection, a keep-alive client) sends only ~40 ms later. asyncio
    # sets TCP_NODELAY on accepted connections only when the listening socket says
    # `proto=IPPROTO_TCP` (what uvicorn's own bind gets from getaddrinfo), not on
    # a bare `socket(AF_INET)` (proto 0); on Linux the option set on the listening
    # socket is also inherited by each connection it accepts.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    address = "{}:{}".format(*sock.getsockname()[:2])
    mode = "stateful" if args.stateful else "stateless"

    mcp = build_server(dict(SEED_DOCUMENTS), args.event_delay_ms / 1000)
    app = mcp.streamable_http_app(
        stateless_http=not args.stateful, transport_security=transport_security(args.allowed_host)
    )

    def ready() -> None:
        log_line("listening", {"address": address, "mode": mode, "event_delay_ms": args.event_delay_ms})

    config = uvicorn.Config(request_log(app, ready), log_level="warning", access_log=False, timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
