"""Operator commands of ``genesis-trio``: stats, components, send, publish, request, tail.

The HTTP verbs call the hub's API (docs/api.md) with httpx, synchronously;
``tail`` is a :class:`~genesis_trio.TranscendentalWebSocket` that prints what
its topics carry and resumes its session across lost links and hub restarts.
docs/cli.md describes every verb, option and exit status.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import trio

from ._client.client import TranscendentalWebSocket
from ._client.types import Connected, LinkEvent
from ._core.config import ClientConfig
from ._core.errors import GenesisError
from ._core.frames import valid_component_id, valid_subscription, valid_topic
from ._core.message import Message

if TYPE_CHECKING:
    import httpx

ENV_VARS: Final = ("GENESIS_TRIO_URL", "GENESIS_TRIO_TOKEN", "GENESIS_TRIO_TIMEOUT")
"""The environment variables the operator commands read (beside ``serve``'s)."""
COMMANDS: Final = ("stats", "components", "send", "publish", "request", "tail")
"""The operator commands."""
DEFAULT_URL: Final = "http://127.0.0.1:8000"
REQUEST_MARGIN: Final = 5.0
"""``request`` waits this much longer over HTTP than the hub waits for the reply."""
TAIL_CONFIG: Final = ClientConfig(backoff_cap=2.0, breaker_reset=5.0)
"""``tail`` never gives up (no ``max_reconnect_attempts``) and, while the hub is down,
tries at least every 2 s (with jitter), pausing 5 s when its circuit breaker opens."""
TABLE_COLUMNS: Final = ("id", "connected", "node", "topics", "pending_out", "rtt_ms")
"""The columns of ``components --table``."""

Verb = Callable[[argparse.Namespace], int]


class OpsError(Exception):
    """A command failed: ``message`` goes to stderr, ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- arguments -------------------------------------------------------------------------


def seconds(text: str) -> float:
    """A positive, finite number of seconds (argparse ``type``)."""
    if not 0 < (value := float(text)) < float("inf"):  # argparse explains a ValueError
        raise ValueError(text)
    return value


def count(text: str) -> int:
    """A positive integer (argparse ``type``)."""
    if (value := int(text)) < 1:
        raise ValueError(text)
    return value


def parse_json(text: str) -> Any:
    """``text`` as JSON (``-``: standard input); :class:`OpsError` with status 2 if it is not."""
    if text == "-":
        text = sys.stdin.read()

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise OpsError(f"JSON argument is not valid JSON: {exc}", 2) from None


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    formatter: type[argparse.HelpFormatter],
) -> None:
    """Add the operator commands to the ``genesis-trio`` subcommands."""
    env = os.environ.get

    def verb(
        name: str, run: Verb, summary: str, text: str, target: str = ""
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=summary, description=text, formatter_class=formatter)
        parser.set_defaults(ops_verb=run)
        if target:
            what = "the component's id" if target == "ID" else "the topic"
            parser.add_argument(target.lower(), metavar=target, help=what)
            parser.add_argument("type", metavar="TYPE", help="the message type")
            data = "the message data, a JSON value (-: read stdin; default: no data)"
            parser.add_argument("data", metavar="JSON", nargs="?", help=data)
        hub = parser.add_argument_group("hub")
        url = env("GENESIS_TRIO_URL", DEFAULT_URL)
        hub.add_argument("--url", default=url, help="the hub's HTTP base URL (GENESIS_TRIO_URL)")
        # No default shown: the token is read at run time, so --help never prints a secret.
        hub.add_argument(
            "--token", help="bearer token, if the hub authenticates (GENESIS_TRIO_TOKEN)"
        )
        if name != "tail":
            waits = "the hub waits for the reply" if name == "request" else "to wait for the hub"
            timeout = env("GENESIS_TRIO_TIMEOUT", "10")
            text = f"seconds {waits} (GENESIS_TRIO_TIMEOUT)"
            hub.add_argument("--timeout", type=seconds, default=timeout, help=text)
        return parser

    verb("stats", _stats, "print the hub's statistics", "GET /api/stats, printed as JSON.")
    listing = verb(
        "components",
        _components,
        "list sessions, one JSON object per line",
        "GET /api/components, following its pages: one JSON object per session, by id.",
    )
    listing.add_argument("--topic", help="only the subscribers of this topic")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--connected", action="store_const", const=True, help="only connected ones")
    state.add_argument(
        "--disconnected", dest="connected", action="store_const", const=False, help="only others"
    )
    listing.add_argument("--limit", type=count, help="print at most N sessions (default: all)")
    listing.add_argument("--page-size", type=count, default=100, help="sessions per request")
    listing.add_argument(
        "--table", action="store_true", help="a table: " + ", ".join(TABLE_COLUMNS)
    )
    verb("send", _post, "send a message to a component", "POST /api/components/ID/messages.", "ID")
    verb("publish", _post, "publish to a topic", "POST /api/topics/TOPIC/messages.", "TOPIC")
    verb(
        "request",
        _post,
        "ask a component; print the reply's data",
        "POST /api/components/ID/requests; prints the reply's data as JSON. HTTP waits "
        f"{REQUEST_MARGIN:g} s longer than --timeout, so the hub's 504 arrives first.",
        "ID",
    )
    follow = verb(
        "tail",
        _tail,
        "print what topics carry, one JSON line per message",
        "Subscribe to TOPICs on the hub's WebSocket (--url with ws/wss and path /ws) and print "
        'each message as one JSON line {"topic", "from", "type", "data", "seq"} until SIGINT or '
        "SIGTERM; reconnect and resume across lost links and hub restarts (stderr says so).",
    )
    follow.add_argument("topics", metavar="TOPIC", nargs="+", help="a topic ($presence too)")
    follow.add_argument("--id", help="component id (default: tail.HOST.HASH-OF-TOPICS)")


def run(args: argparse.Namespace) -> int:
    """Run the operator command ``args`` names; return the exit status."""
    verb: Verb = args.ops_verb
    try:
        return verb(args)
    except OpsError as exc:
        print(f"genesis-trio: {exc.message}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout's reader left (| head): not an error
        _quiet(sys.stdout)
        return 0


def _print(value: Any, indent: int | None = None) -> None:
    print(json.dumps(value, indent=indent, default=str), flush=True)


# -- the HTTP verbs --------------------------------------------------------------------


def problem_message(response: httpx.Response) -> str:
    """An error response in one line: ``<status> <title>: <detail>`` (then ``[code]``)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "title" in body:
        text = f"{body.get('status', response.status_code)} {body['title']}: {body.get('detail')}"
        return text + (f" [{body['code']}]" if body.get("code") else "")
    excerpt = " ".join(response.text.split())[:200] or "(no body)"
    return f"{response.status_code} {response.reason_phrase}: {excerpt}"


def check_url(url: str) -> None:
    """Refuse (status 2) a ``--url`` that is not ``http(s)://HOST[:PORT][/PATH]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise OpsError(f"--url must be http://HOST[:PORT] or https://..., not {url!r}", 2)


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("GENESIS_TRIO_TOKEN") or None


def _client(args: argparse.Namespace, extra: float = 0.0) -> httpx.Client:
    """An HTTP client for ``--url``, with ``--token`` and ``--timeout`` (plus ``extra``)."""
    import httpx  # here, not at the top: ``serve`` never pays for it

    check_url(args.url)
    token = _token(args)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout + extra)


def call(client: httpx.Client, method: str, path: str, **options: Any) -> Any:
    """One API call (``options``: httpx's ``params``, ``json``): its JSON answer or OpsError."""
    import httpx

    url = str(client.base_url).rstrip("/")
    try:
        response = client.request(method, path, **options)
    except httpx.ConnectError as exc:
        raise OpsError(f"cannot connect to {url}: {exc}") from None
    except httpx.TimeoutException:
        raise OpsError(f"no answer from {url} within {client.timeout.read:g} s") from None
    except httpx.HTTPError as exc:
        raise OpsError(f"{method} {url}{path} failed: {exc}") from None
    if response.is_error:
        raise OpsError(problem_message(response))
    try:
        return response.json()
    except ValueError:
        raise OpsError(f"{method} {path}: the answer is not JSON") from None


def _stats(args: argparse.Namespace) -> int:
    with _client(args) as api:
        _print(call(api, "GET", "/api/stats"), indent=2)
    return 0


POSTS: Final = {
    "send": "/api/components/{}/messages",
    "publish": "/api/topics/{}/messages",
    "request": "/api/components/{}/requests",
}
"""Where ``send``, ``publish`` and ``request`` post their message (``{}``: the target)."""


def _post(args: argparse.Namespace) -> int:
    """``send``, ``publish``, ``request``: POST a message to its target, print the answer."""
    if args.command == "publish":
        target, valid, what = args.topic, valid_topic(args.topic), "topic"
    else:
        target, valid, what = args.id, valid_component_id(args.id), "component id"
    if not valid:
        raise OpsError(f"invalid {what} {target!r}", 2)
    body: dict[str, Any] = {"type": args.type}
    if args.data is not None:
        body["data"] = parse_json(args.data)
    path = POSTS[args.command].format(quote(target, safe=""))
    if args.command != "request":
        with _client(args) as api:
            _print(call(api, "POST", path, json=body))
        return 0
    with _client(args, extra=REQUEST_MARGIN) as api:
        _print(call(api, "POST", path, json=body | {"timeout": args.timeout})["data"])
    return 0


def _components(args: argparse.Namespace) -> int:
    query: dict[str, Any] = {} if args.topic is None else {"topic": args.topic}
    if args.connected is not None:
        query["connected"] = "true" if args.connected else "false"
    left: int | None = args.limit
    rows: list[dict[str, Any]] = []
    with _client(args) as api:
        while left is None or left > 0:
            query["limit"] = args.page_size if left is None else min(args.page_size, left)
            page = call(api, "GET", "/api/components", params=query)
            items: list[dict[str, Any]] = page["items"][: query["limit"]]
            for item in items:
                if args.table:
                    rows.append(item)
                else:
                    _print(item)
            left = None if left is None else left - len(items)
            after = page.get("next")
            if after is None or not items:
                break
            if "after" in query and after <= query["after"]:
                raise OpsError(f"the hub's pages went backwards ({query['after']!r}, {after!r})")
            query["after"] = after
    if args.table:
        print("\n".join(format_table(rows)), flush=True)
    return 0


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "connected":
        return "yes" if value else "no"
    if column == "topics":
        return ",".join(value) or "-"
    return f"{value:.1f}" if column == "rtt_ms" else str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """``components --table``: a header and one aligned line per session."""
    lines = [list(TABLE_COLUMNS), *([_cell(c, row.get(c)) for c in TABLE_COLUMNS] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(TABLE_COLUMNS))]
    right = (False, False, False, False, True, True)  # numbers align right
    return [
        "  ".join(
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(line, widths, right, strict=True)
        ).rstrip()
        for line in lines
    ]


# -- tail --------------------------------------------------------------------------------


def ws_url(http_url: str) -> str:
    """The hub's WebSocket URL for its HTTP base: http→ws, https→wss, path ``/ws``."""
    check_url(http_url)
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


def default_tail_id(topics: Sequence[str], host: str | None = None) -> str:
    """``tail.<host>.<hash>``: the same for the same host and topics (in any order)."""
    name = host if host is not None else socket.gethostname()
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")[:64] or "host"
    digest = hashlib.sha256("\n".join(sorted(set(topics))).encode()).hexdigest()[:10]
    return f"tail.{clean}.{digest}"


def message_line(message: Message) -> str:
    """One received message as ``tail`` prints it."""
    record = {"topic": message.topic, "from": message.sender, "type": message.type}
    return json.dumps(record | {"data": message.data, "seq": message.seq}, default=str)


def _tail(args: argparse.Namespace) -> int:
    url = ws_url(args.url)
    for topic in args.topics:
        if not valid_subscription(topic):
            raise OpsError(f"invalid topic {topic!r}", 2)
    cid = args.id if args.id is not None else default_tail_id(args.topics)
    if not valid_component_id(cid):
        raise OpsError(f"invalid component id {cid!r}", 2)
    return trio.run(tail, url, cid, args.topics, _token(args), sys.stdout, sys.stderr)


async def tail(
    url: str, cid: str, topics: Sequence[str], token: str | None, out: TextIO, err: TextIO
) -> int:
    """Print every message on ``topics`` to ``out`` until SIGINT/SIGTERM (then return 0).

    Link events go to ``err``. Returns 1 when the first connection fails or the
    hub ends the link for good (a takeover by the same id, a refused credential).
    Leaving says ``bye``: the hub forgets the session.
    """

    connected = stopping = False

    def report(text: str) -> None:
        print(f"genesis-trio: tail: {text}", file=err, flush=True)

    def link_event(event: LinkEvent) -> None:
        nonlocal connected
        if isinstance(event, Connected):
            connected = True
            if event.first:
                report(f"connected to {url} as {cid} (topics: {', '.join(topics)})")
            elif event.recovered:
                report("resumed the session (nothing lost)")
            else:
                report("reconnected, but the hub started a new session: messages may be lost")
        elif event.will_retry:
            report(f"link lost ({event.code} {event.reason}); reconnecting")

    config = attrs.evolve(TAIL_CONFIG, token=token)
    client = TranscendentalWebSocket(
        url, cid, config=config, topics=topics, on_link_event=link_event
    )
    status = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal stopping
                async for _ in signals:
                    if stopping or not connected:  # a second signal, or no session yet
                        nursery.cancel_scope.cancel()
                        return
                    stopping = True
                    # Close the client, do not cancel it: a cancelled `async with` body
                    # races the link's own close and often loses the bye.
                    nursery.start_soon(client.aclose)

            nursery.start_soon(stop_on_signal)
            try:
                async with client as ws:
                    async for message in ws:
                        try:
                            print(message_line(message), file=out, flush=True)
                        except BrokenPipeError:  # our reader left (| head): stop quietly
                            _quiet(out)
                            break
            except (GenesisError, OSError) as exc:
                if not stopping:
                    where = "stopped" if connected else f"cannot connect to {url}"
                    report(f"{where}: {type(exc).__name__}: {exc}")
                    status = 1
            nursery.cancel_scope.cancel()
    return status


def _quiet(out: TextIO) -> None:
    """Point ``out``'s descriptor at /dev/null (nothing more to say, nor to fail on at exit)."""
    try:
        fd = out.fileno()
    except (OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
