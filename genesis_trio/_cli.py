"""Command line: ``genesis-trio serve`` (also ``python -m genesis_trio``)."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from . import _ops
from ._api.access import is_loopback
from ._core.config import HubConfig
from ._hub.auth import Authenticator, JWTAuthenticator, StaticTokens
from ._hub.hub import TranscendentalExternalWebSocket
from ._system.hybrid import GenesisHybridSystem
from ._system.serve import SHUTDOWN_GRACE, ServeInfo, fit_descriptors
from ._system.stores import store_from_spec
from .stores._cluster import StoreFenced
from .stores._protocol import SessionStore, StoreError

ENV_PREFIX = "GENESIS_TRIO_"


def _optional_float(text: str) -> float | None:
    """A float, or nothing (``""``/``none``: no limit)."""
    return None if text.strip().lower() in ("", "none") else float(text)


CONFIG_FLAGS: tuple[tuple[str, Any, str], ...] = (
    # (HubConfig field, type, help): each becomes --field-name and GENESIS_TRIO_FIELD_NAME
    ("max_message_size", int, "largest WebSocket message accepted, in bytes, after decompression"),
    (
        "compression",
        str,
        "'deflate': accept permessage-deflate when offered (~100 KiB per link); 'off': never",
    ),
    ("retention_messages", int, "unacknowledged messages kept per session for resume"),
    (
        "retention_bytes",
        int,
        "bytes of unacknowledged messages kept per session (a full buffer makes senders wait)",
    ),
    ("retention_seconds", float, "age limit of unacknowledged messages for a disconnected session"),
    (
        "max_retained_bytes",
        int,
        "bytes all sessions retain together; past it the longest-disconnected lose the oldest",
    ),
    ("session_expiry", float, "seconds after which a disconnected session is forgotten"),
    (
        "anonymous_session_expiry",
        float,
        "seconds after which a disconnected session of a client that sent no id is forgotten",
    ),
    ("heartbeat_interval", float, "seconds between the hub's pings"),
    ("handshake_timeout", float, "seconds a new link has to send its hello"),
    (
        "slow_consumer_timeout",
        float,
        "seconds a client may leave its buffer full, or a send to it blocked, before 4004",
    ),
    ("close_timeout", float, "seconds a closing link may take before its socket is dropped"),
    ("store_outage_timeout", float, "seconds of failing store writes before links close (4006)"),
    ("max_connections", int, "WebSocket links held at once; more are refused with HTTP 503"),
    (
        "max_connections_per_address",
        int,
        "links held at once from one client address; more are refused with HTTP 429",
    ),
    (
        "max_sessions",
        int,
        "sessions held; at the limit the longest-disconnected one is forgotten (else 1013)",
    ),
    ("max_topics_per_session", int, "subscriptions one session may hold (more: error 'limit')"),
    ("max_subscriptions", int, "subscriptions all sessions hold together (more: error 'limit')"),
    ("token_grace", float, "seconds a link may outlive its credential's expiry (then 4009)"),
    ("rate_messages", _optional_float, "messages per second one link may send (default: no limit)"),
    ("rate_bytes", _optional_float, "bytes per second one link may send (default: no limit)"),
    (
        "identity_rate_messages",
        _optional_float,
        "messages per second all links of one identity may send together (default: no limit)",
    ),
    (
        "identity_rate_bytes",
        _optional_float,
        "bytes per second all links of one identity may send together (default: no limit)",
    ),
    ("flood_timeout", float, "seconds over its rate limit after which a link is closed (1008)"),
)


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def env_name(dest: str) -> str:
    """The environment variable that sets the flag stored in ``dest``."""
    return ENV_PREFIX + dest.upper()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except empty ones (they are explained in the help text)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every flag also reads ``GENESIS_TRIO_<FLAG>``)."""
    defaults = HubConfig()
    parser = argparse.ArgumentParser(
        prog="genesis-trio",
        description="Resilient real-time messaging over WebSockets, on Trio.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="run the hub (WebSocket at /ws, health at /health)",
        description=(
            "Run the hub on Hypercorn's Trio worker. Every flag can also be set with an "
            "environment variable GENESIS_TRIO_<FLAG> (for example GENESIS_TRIO_PORT=9000, "
            "GENESIS_TRIO_ALLOWED_ORIGIN=https://a.example,https://b.example); an unknown "
            "GENESIS_TRIO_ variable is an error. SIGINT or SIGTERM shut down gracefully: links "
            "are closed with 1001 so clients resume elsewhere; a second signal stops at once."
        ),
        formatter_class=_HelpFormatter,
    )
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="interface to bind")
    serve.add_argument(
        "--port", type=int, default=_env("PORT", "8000"), help="TCP port (0: any free port)"
    )
    serve.add_argument(
        "--node-id",
        default=_env("NODE_ID", ""),
        help="this hub's name (default: hub-<random hex>)",
    )
    for field, kind, text in CONFIG_FLAGS:
        default = getattr(defaults, field)
        serve.add_argument(
            "--" + field.replace("_", "-"),
            type=kind,
            default=_env(field.upper(), "" if default is None else str(default)),
            help=text,
        )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[o.strip() for o in _env("ALLOWED_ORIGIN", "").split(",") if o.strip()],
        help=(
            "also accept browser connections from this Origin (repeatable; in the environment, "
            "comma-separated; '*': any; default: the hub's own origin only)"
        ),
    )
    serve.add_argument(
        "--store",
        default=_env("STORE", "auto"),
        help=(
            "where sessions live between restarts: sqlite:PATH (a file, created if missing), "
            "auto (sqlite:$XDG_DATA_HOME/genesis_trio/hub-PORT.sqlite3, default "
            "~/.local/share/...), redis://HOST:PORT/DB[?prefix=NAME][&cluster=yes] (a Redis "
            "server; cluster=yes: a Redis Cluster) "
            "or none (in this process only: a restart loses them)"
        ),
    )
    serve.add_argument(
        "--cluster",
        action="store_true",
        default=_env("CLUSTER", "") in ("1", "true", "yes", "on"),
        help=(
            "with --store redis://, be one node of a cluster sharing that Redis and prefix "
            "(each with its own --node-id; docs/cluster.md)"
        ),
    )
    serve.add_argument(
        "--node-lease",
        type=float,
        default=_env("NODE_LEASE", "10"),
        help="cluster: seconds after which a silent node's sessions may be taken by others",
    )
    serve.add_argument(
        "--store-sync",
        default=_env("STORE_SYNC", "normal"),
        choices=["normal", "full"],
        help="SQLite durability: normal survives a killed hub; full also survives power loss",
    )
    security = serve.add_argument_group(
        "security",
        "Without an authenticator any client is anyone: safe on loopback only. Binding another "
        "address needs one of --auth-* or an explicit --insecure (docs/security.md).",
    )
    security.add_argument(
        "--auth-jwt-key-file",
        default=_env("AUTH_JWT_KEY_FILE", ""),
        help="authenticate with JSON Web Tokens: the HMAC secret or the PEM public key",
    )
    security.add_argument(
        "--auth-jwt-algorithm",
        action="append",
        default=[a.strip() for a in _env("AUTH_JWT_ALGORITHM", "").split(",") if a.strip()],
        help="an accepted JWT algorithm, such as HS256, RS256, ES256 (repeatable; required)",
    )
    security.add_argument(
        "--auth-jwt-audience", default=_env("AUTH_JWT_AUDIENCE", ""), help="required JWT aud"
    )
    security.add_argument(
        "--auth-jwt-issuer", default=_env("AUTH_JWT_ISSUER", ""), help="required JWT iss"
    )
    security.add_argument(
        "--auth-token-file",
        default=_env("AUTH_TOKEN_FILE", ""),
        help=(
            'authenticate with static tokens from a JSON file: {"tokens": [{"token", "sub", ...}]}'
        ),
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        default=_env("INSECURE", "") in ("1", "true", "yes", "on"),
        help="allow a non-loopback address without authentication (anyone can be anyone)",
    )
    security.add_argument(
        "--allowed-host",
        action="append",
        default=[h.strip() for h in _env("ALLOWED_HOST", "").split(",") if h.strip()],
        help=(
            "without authentication on loopback, also answer requests naming this Host (repeatable;"
            " default: loopback names only, against DNS rebinding; docs/security.md)"
        ),
    )
    security.add_argument(
        "--api-public",
        action="store_true",
        default=_env("API_PUBLIC", "") in ("1", "true", "yes", "on"),
        help=(
            "without authentication, let the HTTP API and /metrics answer clients that are not "
            "on loopback (with authentication they need an admin token; docs/api.md)"
        ),
    )
    security.add_argument(
        "--certfile", default=_env("CERTFILE", ""), help="serve TLS (wss://): the PEM certificate"
    )
    security.add_argument(
        "--keyfile", default=_env("KEYFILE", ""), help="serve TLS: the PEM private key"
    )
    serve.add_argument(
        "--demos",
        default=_env("DEMOS", "on"),
        choices=["on", "off"],
        help="serve the demo pages /demo/chat, /demo/telemetry and the hub's /dashboard",
    )
    serve.add_argument(
        "--gc-tuning",
        default=_env("GC_TUNING", "on"),
        choices=["on", "off"],
        help=(
            "freeze start-up objects, collect garbage less often (faster under load) and "
            "return freed memory to the OS every 10 s"
        ),
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="logging verbosity",
    )
    _ops.add_parsers(sub, _HelpFormatter)  # stats, components, send, publish, request, tail
    return parser


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve: argparse.ArgumentParser = subcommands.choices["serve"]
    return serve


def known_env(parser: argparse.ArgumentParser) -> set[str]:
    """Every ``GENESIS_TRIO_*`` variable a flag reads (``serve``'s and the operator commands')."""
    serve = {env_name(a.dest) for a in _serve_parser(parser)._actions if a.option_strings}
    return serve | set(_ops.ENV_VARS)


def unknown_env(environ: Mapping[str, str], parser: argparse.ArgumentParser) -> list[str]:
    """``GENESIS_TRIO_*`` variables that name no flag (each is a mistake: say so)."""
    known = known_env(parser)
    return sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)


def hub_config_from_args(args: argparse.Namespace) -> HubConfig:
    """Translate parsed flags into a :class:`HubConfig`."""
    options: dict[str, object] = {field: getattr(args, field) for field, _, _ in CONFIG_FLAGS}
    options["allowed_origins"] = frozenset(args.allowed_origin) if args.allowed_origin else None
    if args.node_id:
        options["node_id"] = args.node_id
    options["max_connections"] = fit_descriptors(args.max_connections)  # serving: raise ulimit
    return HubConfig(**options)  # type: ignore[arg-type]


def authenticator_from_args(args: argparse.Namespace) -> Authenticator | None:
    """The authenticator the ``--auth-*`` flags describe (None: none)."""
    if args.auth_jwt_key_file and args.auth_token_file:
        raise SystemExit("genesis-trio: choose one of --auth-jwt-key-file and --auth-token-file")
    try:
        if args.auth_jwt_key_file:
            if not args.auth_jwt_algorithm:
                raise SystemExit("genesis-trio: --auth-jwt-key-file needs --auth-jwt-algorithm")
            return JWTAuthenticator.from_file(
                args.auth_jwt_key_file,
                args.auth_jwt_algorithm,
                audience=args.auth_jwt_audience or None,
                issuer=args.auth_jwt_issuer or None,
            )
        if args.auth_token_file:
            return StaticTokens.from_file(args.auth_token_file)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"genesis-trio: cannot use the authentication settings: {exc}") from None
    return None


def store_from_args(args: argparse.Namespace) -> SessionStore | None:
    """The session store ``--store`` names (None for ``none``); exits with the reason if bad."""
    try:
        return store_from_spec(
            args.store,
            port=args.port,
            sync=args.store_sync,
            node_id=args.node_id or None,
            cluster=args.cluster,
            lease=args.node_lease,
        )
    except ValueError as exc:
        raise SystemExit(f"genesis-trio: --store: {exc}") from None


async def _serve(args: argparse.Namespace) -> None:
    log = logging.getLogger("genesis_trio")
    authenticator = authenticator_from_args(args)
    if authenticator is None and not is_loopback(args.host):
        if not args.insecure:
            raise SystemExit(
                f"genesis-trio: refusing to serve {args.host} without authentication: anyone "
                "could use any component id. Give --auth-jwt-key-file or --auth-token-file, "
                "or --insecure if you mean it (docs/security.md)."
            )
        log.warning("INSECURE: serving %s without authentication", args.host)
    if bool(args.certfile) != bool(args.keyfile):
        raise SystemExit("genesis-trio: TLS needs both --certfile and --keyfile")
    hub = TranscendentalExternalWebSocket(
        hub_config_from_args(args), store=store_from_args(args), authenticator=authenticator
    )
    system = GenesisHybridSystem(
        hub,
        host=args.host,
        port=args.port,
        certfile=args.certfile or None,
        keyfile=args.keyfile or None,
        gc_tuning=args.gc_tuning == "on",
        api_public=args.api_public,
        demos=args.demos == "on",
        allowed_hosts=args.allowed_host,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def run_system(task_status: trio.TaskStatus[ServeInfo]) -> None:
                await system.run(task_status=task_status)
                nursery.cancel_scope.cancel()  # finished: stop watching signals

            info: ServeInfo = await nursery.start(run_system)
            log.info(
                "hub %s listening on %s (session store: %s)",
                hub.config.node_id,
                info.ws_url,
                hub.store.name if hub.store is not None else "none",
            )
            print(
                f"genesis-trio: hub ready at {info.ws_url} (API: {info.http_url}/api)",
                flush=True,
            )
            async for signum in signals:
                if system.shutting_down:
                    log.warning("second signal: stopping now")
                    system.stop_now()
                    nursery.cancel_scope.cancel()
                    break
                log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                system.shutdown()
                grace = hub.config.close_timeout + SHUTDOWN_GRACE
                nursery.cancel_scope.deadline = trio.current_time() + grace
    log.info("stopped")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genesis-trio`` command."""
    parser = build_parser()
    stray = unknown_env(os.environ, parser)
    if stray:
        known = sorted(known_env(parser))
        for name in stray:
            hint = difflib.get_close_matches(name, known, n=1)
            also = f" (did you mean {hint[0]}?)" if hint else ""
            print(f"genesis-trio: unknown environment variable {name}{also}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command in _ops.COMMANDS:
        return _ops.run(args)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # coredis logs each reconnect attempt at INFO; the hub says once that the store failed.
    logging.getLogger("coredis").setLevel(max(logging.WARNING, logging.root.level))
    if args.command == "serve":
        status = 0
        try:
            trio.run(_serve, args)
        except* StoreError as group:
            exc = _first(group)
            what = "stopped" if isinstance(exc, StoreFenced) else "cannot start"
            print(f"genesis-trio: {what}: {exc}", file=sys.stderr)
            status = 3
        except* OSError as group:
            print(f"genesis-trio: cannot start: {_first(group)}", file=sys.stderr)
            status = 4
        return status
    return 2  # pragma: no cover - argparse enforces the subcommand


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
