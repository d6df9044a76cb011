"""Command line: ``genesis-trio serve`` (also ``python -m genesis_trio``)."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

import trio

from ._config import HubConfig
from ._hub import TranscendentalExternalWebSocket
from ._serve import GenesisHybridSystem, ServeInfo
from ._sqlite_store import SQLiteStore
from ._store import SessionStore, StoreError

ENV_PREFIX = "GENESIS_TRIO_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


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
            "environment variable GENESIS_TRIO_<FLAG> (for example GENESIS_TRIO_PORT=9000). "
            "SIGINT or SIGTERM shut down gracefully: links are closed with 1001 so clients "
            "resume elsewhere."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="interface to bind")
    serve.add_argument(
        "--port", type=int, default=int(_env("PORT", "8000")), help="TCP port (0: any free port)"
    )
    serve.add_argument(
        "--node-id", default=_env("NODE_ID", ""), help="this hub's name (default: random)"
    )
    serve.add_argument(
        "--max-message-size",
        type=int,
        default=int(_env("MAX_MESSAGE_SIZE", str(defaults.max_message_size))),
        help="largest WebSocket message accepted, in bytes, after decompression",
    )
    serve.add_argument(
        "--retention-messages",
        type=int,
        default=int(_env("RETENTION_MESSAGES", str(defaults.retention_messages))),
        help="unacknowledged messages kept per session for resume",
    )
    serve.add_argument(
        "--retention-seconds",
        type=float,
        default=float(_env("RETENTION_SECONDS", str(defaults.retention_seconds))),
        help="age limit of unacknowledged messages for a disconnected session",
    )
    serve.add_argument(
        "--session-expiry",
        type=float,
        default=float(_env("SESSION_EXPIRY", str(defaults.session_expiry))),
        help="seconds after which a disconnected session is forgotten",
    )
    serve.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(_env("HEARTBEAT_INTERVAL", str(defaults.heartbeat_interval))),
        help="seconds between the hub's pings",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[o for o in _env("ALLOWED_ORIGINS", "").split(",") if o],
        help="accept browser connections only from this Origin (repeatable; default: any)",
    )
    serve.add_argument(
        "--store",
        default=_env("STORE", "auto"),
        help=(
            "where sessions live between restarts: sqlite:PATH (a file, created if missing), "
            "auto (sqlite:$XDG_DATA_HOME/genesis_trio/hub-PORT.sqlite3, default "
            "~/.local/share/...) or none (in this process only: a restart loses them)"
        ),
    )
    serve.add_argument(
        "--store-sync",
        default=_env("STORE_SYNC", "normal"),
        choices=["normal", "full"],
        help="SQLite durability: normal survives a killed hub; full also survives power loss",
    )
    serve.add_argument(
        "--gc-tuning",
        default=_env("GC_TUNING", "on"),
        choices=["on", "off"],
        help="freeze start-up objects and collect garbage less often (faster under load)",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="logging verbosity",
    )
    return parser


def hub_config_from_args(args: argparse.Namespace) -> HubConfig:
    """Translate parsed flags into a :class:`HubConfig`."""
    options: dict[str, object] = {
        "max_message_size": args.max_message_size,
        "retention_messages": args.retention_messages,
        "retention_seconds": args.retention_seconds,
        "session_expiry": args.session_expiry,
        "heartbeat_interval": args.heartbeat_interval,
        "allowed_origins": frozenset(args.allowed_origin) if args.allowed_origin else None,
    }
    if args.node_id:
        options["node_id"] = args.node_id
    return HubConfig(**options)  # type: ignore[arg-type]


def default_store_path(port: int) -> pathlib.Path:
    """Where ``--store auto`` keeps sessions: a per-user data directory, one file per port."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return pathlib.Path(base) / "genesis_trio" / f"hub-{port}.sqlite3"


def store_from_args(args: argparse.Namespace) -> SessionStore | None:
    """The session store a ``--store`` value names (None for ``none``)."""
    spec: str = args.store
    if spec == "none":
        return None
    if spec == "auto":
        path = default_store_path(args.port)
        path.parent.mkdir(parents=True, exist_ok=True)
        return SQLiteStore(path, synchronous=args.store_sync.upper())
    if spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return SQLiteStore(spec[len("sqlite:") :], synchronous=args.store_sync.upper())
    raise SystemExit(f"genesis-trio: --store must be sqlite:PATH or none, not {spec!r}")


async def _serve(args: argparse.Namespace) -> None:
    hub = TranscendentalExternalWebSocket(hub_config_from_args(args), store=store_from_args(args))
    system = GenesisHybridSystem(
        hub, host=args.host, port=args.port, gc_tuning=args.gc_tuning == "on"
    )
    log = logging.getLogger("genesis_trio")
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
                f"genesis-trio: hub ready at {info.ws_url} (health: {info.http_url}/health)",
                flush=True,
            )
            async for signum in signals:
                if system.shutting_down:
                    log.warning("second signal: stopping now")
                    nursery.cancel_scope.cancel()
                    break
                log.info("%s: shutting down gracefully", signal.Signals(signum).name)
                system.shutdown()
                nursery.cancel_scope.deadline = trio.current_time() + 5.0
    log.info("stopped")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genesis-trio`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        status = 0
        try:
            trio.run(_serve, args)
        except* StoreError as group:
            print(f"genesis-trio: cannot start: {_first(group)}", file=sys.stderr)
            status = 3
        except* OSError as group:
            print(f"genesis-trio: cannot start: {_first(group)}", file=sys.stderr)
            status = 4
        return status
    return 2  # pragma: no cover - argparse enforces the subcommand


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
