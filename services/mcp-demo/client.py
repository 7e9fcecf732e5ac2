"""A command-line MCP client on the official Python SDK (`mcp` 2.3.0), for tests and demos.

    .venv/bin/python services/mcp-demo/client.py --url http://127.0.0.1:8090/mcp list-tools
    client.py --url URL --token "$TOKEN" call traverse_context --args '{"path": "projects", "depth": 2}' --progress
    client.py --url URL read-resource ctx://projects/engineering/roadmap
    client.py --url URL get-prompt summarize_context --args '{"path": "projects/engineering/roadmap"}'
    client.py --url URL session-id
    client.py --url URL call-with-session SESSION_ID read_context --args '{"path": "projects/engineering/roadmap"}'
    client.py --url URL discover

Every line on stdout is one JSON object. The last is the outcome, either
`{"result": ..., "protocol_version": ..., "session_id": ...}` or
`{"error": {"http_status", "jsonrpc_code", "message", "www_authenticate"}}`;
`call` prints each progress or log event before it, as it arrives:
`{"event": "progress"|"log", "t": seconds since the call was sent, ...}`.

Exit status: 0 when the server answered (with a result or an error: tests
assert on either), 1 when no answer came (connection refused or closed,
timeout; the error line says which), 2 for a wrong command line.

Connecting is the SDK's: by default `Client(mode="auto")`, which probes
`server/discover` at 2026-07-28 and falls back to the 2025 `initialize`
handshake. `--protocol-version 2026-07-28` pins the modern revision (no
probe); a 2025 revision runs the `initialize` handshake offering it.
`session-id` always uses the handshake (sessions exist only there) and
leaves the session open; `call-with-session` sends a request on a session
id it did not initialise, as a client that got hold of someone else's would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client import Client, ClientSession
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    create_oauth_metadata_request,
    extract_resource_metadata_from_www_auth,
    handle_protected_resource_response,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

if sys.version_info < (3, 11):  # the backport anyio installs there
    from exceptiongroup import BaseExceptionGroup

CLIENT_INFO = types.Implementation(name="ctxgate-mcp-demo-client", version="0.1.0")
# SDK-made errors that mean no answer arrived (unless an HTTP error status did).
NO_ANSWER_CODES = {types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT}


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line, separators=(",", ":")), flush=True)


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass
class Exchange:
    """The HTTP answer to one JSON-RPC request; the body is kept for error statuses only."""

    status: int
    www_authenticate: str | None
    body: bytes


class HttpLog:
    """Watches the SDK's HTTP traffic (an httpx2 response hook) for what the SDK does not surface.

    The SDK turns an HTTP error status without a JSON-RPC body into a generic
    error and keeps the `Mcp-Session-Id` to itself; the hook records the
    status, `WWW-Authenticate` and body of the latest request's answer, and
    the session id a server issued. The client runs one request at a time,
    so the latest answer is the one to the request that failed.
    """

    def __init__(self) -> None:
        self.last: Exchange | None = None
        self.session_id: str | None = None

    async def on_response(self, response: httpx2.Response) -> None:
        self.session_id = response.headers.get("mcp-session-id") or self.session_id
        if not carries_jsonrpc_request(response.request):
            return
        body = await response.aread() if response.status_code >= 400 else b""
        self.last = Exchange(response.status_code, response.headers.get("www-authenticate"), body)


def carries_jsonrpc_request(request: httpx2.Request) -> bool:
    if request.method != "POST":
        return False
    try:
        message = json.loads(request.content)
    except ValueError:
        return False
    return isinstance(message, dict) and "id" in message and "method" in message


class EventPrinter:
    """Prints progress and log notifications as they arrive, timed from the start of the call."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def restart(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 4)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        emit({"event": "progress", "t": self.elapsed(), "progress": progress, "total": total, "message": message})

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        emit({"event": "log", "t": self.elapsed(), "level": params.level, "data": params.data})


@dataclass
class Peer:
    """Where to connect and how."""

    url: str
    headers: dict[str, str]
    protocol_version: str | None
    timeout: float
    http: HttpLog
    printer: EventPrinter

    def http_client(self, extra_headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
        client = create_mcp_http_client(headers={**self.headers, **(extra_headers or {})})
        client.event_hooks = {"request": [], "response": [self.http.on_response]}
        return client


@asynccontextmanager
async def connect(peer: Peer, *, log_opt_in: bool = False, keep_session: bool = False) -> AsyncIterator[ClientSession]:
    """A session negotiated the SDK's way (see the module doc for `--protocol-version`)."""
    version = peer.protocol_version
    http = peer.http_client()
    transport = streamable_http_client(peer.url, http_client=http, terminate_on_close=not keep_session)
    callbacks: dict[str, Any] = {
        "read_timeout_seconds": peer.timeout,
        "logging_callback": peer.printer.on_log,
        # 2026-07-28 delivers log messages only to requests that opt in.
        "log_level": "debug" if log_opt_in else None,
        "client_info": CLIENT_INFO,
    }
    if version is not None and version in HANDSHAKE_PROTOCOL_VERSIONS and version != LATEST_HANDSHAKE_VERSION:
        # `Client` always offers the newest 2025 revision; an older one needs its own handshake.
        async with http, transport as (read, write), ClientSession(read, write, **callbacks) as session:
            await initialize_offering(session, version)
            yield session
        return
    mode = "auto" if version is None else "legacy" if version in HANDSHAKE_PROTOCOL_VERSIONS else version
    async with http, Client(transport, mode=mode, cache=None, **callbacks) as client:
        yield client.session


async def initialize_offering(session: ClientSession, version: str) -> None:
    """The `initialize` handshake `ClientSession.initialize` runs, offering `version`."""
    params = types.InitializeRequestParams(
        protocol_version=version, capabilities=types.ClientCapabilities(), client_info=CLIENT_INFO
    )
    result = await session.send_request(types.InitializeRequest(params=params), types.InitializeResult)
    session.adopt(result)
    await session.send_notification(types.InitializedNotification())


@asynccontextmanager
async def borrow_session(peer: Peer, session_id: str) -> AsyncIterator[ClientSession]:
    """A session on someone else's `Mcp-Session-Id`: no handshake, the id sent as is."""
    version = peer.protocol_version or LATEST_HANDSHAKE_VERSION
    client = peer.http_client({"mcp-session-id": session_id})
    transport = streamable_http_client(peer.url, http_client=client, terminate_on_close=False)
    claimed = types.InitializeResult(
        protocol_version=version, capabilities=types.ServerCapabilities(), server_info=CLIENT_INFO
    )
    async with (
        client,
        transport as (read, write),
        ClientSession(read, write, read_timeout_seconds=peer.timeout, client_info=CLIENT_INFO) as session,
    ):
        session.adopt(claimed)
        yield session


def outcome(session: ClientSession, http: HttpLog, result: Any) -> dict[str, Any]:
    return {"result": result, "protocol_version": session.protocol_version, "session_id": http.session_id}


async def list_tools(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    async with connect(peer) as session:
        return outcome(session, peer.http, dump(await session.list_tools()))


async def call(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    async with connect(peer, log_opt_in=args.progress) as session:
        progress = peer.printer.on_progress if args.progress else None
        peer.printer.restart()
        result = await session.call_tool(args.tool, args.args, progress_callback=progress)
        return {**outcome(session, peer.http, dump(result)), "t": peer.printer.elapsed()}


async def read_resource(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    async with connect(peer) as session:
        return outcome(session, peer.http, dump(await session.read_resource(args.uri)))


async def get_prompt(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    async with connect(peer) as session:
        return outcome(session, peer.http, dump(await session.get_prompt(args.name, args.args)))


async def session_id(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """Opens a session and leaves it open: initialize, then tools/list on it.

    The request after the handshake proves the session serves, and makes sure
    the `notifications/initialized` the SDK sends before it has gone out.
    """
    if peer.protocol_version is None:
        peer.protocol_version = LATEST_HANDSHAKE_VERSION
    async with connect(peer, keep_session=True) as session:
        await session.list_tools()
        return outcome(session, peer.http, {"session_id": peer.http.session_id})


async def call_with_session(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    async with borrow_session(peer, args.session_id) as session:
        result = await session.call_tool(args.tool, args.args)
        return {"result": dump(result), "protocol_version": session.protocol_version, "session_id": args.session_id}


async def discover(peer: Peer, args: argparse.Namespace) -> dict[str, Any]:
    """Follow a 401 to the protected resource metadata, with the SDK's OAuth discovery helpers.

    The same steps as the first part of the SDK's OAuth flow: read
    `resource_metadata` from `WWW-Authenticate`, try the candidate URLs in the
    SDK's order, keep the first valid document, and check its `resource`
    against the server URL (RFC 8707) as the SDK does before using it.
    """
    unauthenticated = {k: v for k, v in peer.headers.items() if k.lower() != "authorization"}
    initialize = types.JSONRPCRequest(
        jsonrpc="2.0",
        id=1,
        method="initialize",
        params=dump(
            types.InitializeRequestParams(
                protocol_version=LATEST_HANDSHAKE_VERSION,
                capabilities=types.ClientCapabilities(),
                client_info=CLIENT_INFO,
            )
        ),
    )
    async with create_mcp_http_client(headers=unauthenticated) as http:
        challenge = await http.post(
            peer.url, json=dump(initialize), headers={"accept": "application/json, text/event-stream"}
        )
        www_authenticate = challenge.headers.get("www-authenticate")
        if challenge.status_code != 401:
            return refusal(challenge.status_code, "expected 401 to an unauthenticated request", www_authenticate)
        advertised = extract_resource_metadata_from_www_auth(challenge)
        tried = []
        for url in build_protected_resource_metadata_discovery_urls(advertised, peer.url):
            response = await http.send(create_oauth_metadata_request(url))
            tried.append({"url": url, "http_status": response.status_code})
            metadata = await handle_protected_resource_response(response)
            if metadata is None:
                continue
            expected = resource_url_from_server_url(peer.url)
            return {
                "result": {
                    "www_authenticate": www_authenticate,
                    "resource_metadata": advertised,
                    "metadata_url": url,
                    "metadata": dump(metadata),
                    "resource_matches": check_resource_allowed(expected, str(metadata.resource)),
                    "tried": tried,
                }
            }
    return refusal(401, f"no protected resource metadata found (tried {tried})", www_authenticate)


def refusal(status: int | None, message: str, www_authenticate: str | None, code: int | None = None) -> dict[str, Any]:
    return {
        "error": {"http_status": status, "jsonrpc_code": code, "message": message, "www_authenticate": www_authenticate}
    }


def answered_error(error: MCPError, http: HttpLog) -> dict[str, Any] | None:
    """The server's error answer behind `error`, or None if no answer came (a transport failure)."""
    last = http.last
    if last is not None and last.status >= 400:
        rpc = jsonrpc_error(last.body)
        if rpc is not None:
            return refusal(last.status, rpc.message, last.www_authenticate, rpc.code)
        text = last.body.decode("utf-8", errors="replace").strip()
        return refusal(last.status, text or error.error.message, last.www_authenticate)
    if error.error.code in NO_ANSWER_CODES:
        return None
    return refusal(last.status if last else None, error.error.message, None, error.error.code)


def jsonrpc_error(body: bytes) -> types.ErrorData | None:
    try:
        message = types.jsonrpc_message_adapter.validate_json(body, by_name=False)
    except ValueError:
        return None
    return message.error if isinstance(message, types.JSONRPCError) else None


def first_mcp_error(exc: BaseException) -> MCPError | None:
    """The `MCPError` in `exc`, also when a task group wrapped it in an exception group."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := first_mcp_error(inner)) is not None:
                return found
    return None


Command = Callable[[Peer, argparse.Namespace], Awaitable[dict[str, Any]]]


async def run(command: Command, peer: Peer, args: argparse.Namespace) -> int:
    """Runs `command`; prints its outcome, or the error it ended with, as the last line."""
    try:
        line = await command(peer, args)
    except Exception as exc:
        error = first_mcp_error(exc)
        answer = answered_error(error, peer.http) if error is not None else None
        if answer is not None:
            emit(answer)
            return 0
        emit(refusal(None, f"no answer: {describe(exc)}", None))
        return 1
    emit(line)
    return 0


def describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


def header(value: str) -> tuple[str, str]:
    name, sep, content = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME: VALUE, got {value!r}")
    return name.strip(), content.strip()


def protocol_version(value: str) -> str:
    if value not in (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS):
        known = ", ".join((*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS))
        raise argparse.ArgumentTypeError(f"unknown protocol version {value!r} (SDK 2.3.0 speaks {known})")
    return value


def parse_args(argv: list[str] | None) -> tuple[Command, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the MCP endpoint, e.g. http://127.0.0.1:8090/mcp")
    parser.add_argument("--token", help="sent as Authorization: Bearer TOKEN")
    parser.add_argument("--protocol-version", type=protocol_version, help="default: the SDK's negotiation")
    parser.add_argument("--header", type=header, action="append", default=[], help="extra header NAME: VALUE")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        return sub

    command("list-tools", list_tools, "tools/list")
    sub = command("call", call, "tools/call TOOL")
    sub.add_argument("tool")
    sub.add_argument("--args", type=json_object, default={}, help="the arguments, a JSON object")
    sub.add_argument("--progress", action="store_true", help="ask for progress and log events and print them")
    sub = command("read-resource", read_resource, "resources/read URI")
    sub.add_argument("uri")
    sub = command("get-prompt", get_prompt, "prompts/get NAME")
    sub.add_argument("name")
    sub.add_argument("--args", type=json_object, default={}, help="the arguments, a JSON object of strings")
    command("session-id", session_id, "initialize (2025 handshake), print the session id, leave the session open")
    sub = command("call-with-session", call_with_session, "tools/call on a given Mcp-Session-Id, no handshake")
    sub.add_argument("session_id")
    sub.add_argument("tool")
    sub.add_argument("--args", type=json_object, default={}, help="the arguments, a JSON object")
    command("discover", discover, "follow a 401's resource_metadata to the protected resource metadata")
    args = parser.parse_args(argv)
    return args.handler, args


def main(argv: list[str] | None = None) -> int:
    command, args = parse_args(argv)
    headers = dict(args.header)
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    peer = Peer(args.url, headers, args.protocol_version, args.timeout, HttpLog(), EventPrinter())
    return anyio.run(run, command, peer, args)


if __name__ == "__main__":
    sys.exit(main())
