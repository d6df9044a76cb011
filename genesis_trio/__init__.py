"""genesis_trio: resilient real-time messaging over WebSockets, on Trio.

Components connect to a hub, address each other by id or topic, and keep
talking through dropped links and hub restarts: every message is delivered
exactly once and in order, per session and direction (docs/guarantees.md).
"""

from ._app import GenesisApp as GenesisApp
from ._app import create_app as create_app
from ._backoff import CircuitBreaker as CircuitBreaker
from ._backoff import backoff as backoff
from ._client import TranscendentalWebSocket as TranscendentalWebSocket
from ._client_types import ClientStatistics as ClientStatistics
from ._client_types import Connected as Connected
from ._client_types import ConnectionState as ConnectionState
from ._client_types import Disconnected as Disconnected
from ._client_types import LinkEvent as LinkEvent
from ._codec import JSON_SUBPROTOCOL as JSON_SUBPROTOCOL
from ._codec import MSGPACK_SUBPROTOCOL as MSGPACK_SUBPROTOCOL
from ._config import ClientConfig as ClientConfig
from ._config import HubConfig as HubConfig
from ._errors import CircuitOpenError as CircuitOpenError
from ._errors import CloseCode as CloseCode
from ._errors import ClosedError as ClosedError
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import ErrorCode as ErrorCode
from ._errors import GenesisError as GenesisError
from ._errors import HandshakeError as HandshakeError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import RequestTimeout as RequestTimeout
from ._errors import SendTimeout as SendTimeout
from ._hub import TranscendentalExternalWebSocket as TranscendentalExternalWebSocket
from ._message import Message as Message
from ._serve import GenesisHybridSystem as GenesisHybridSystem
from ._serve import ServeInfo as ServeInfo
from ._serve import serve_hub as serve_hub
from ._stats import HubStatistics as HubStatistics

__version__ = "0.1.0"

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientConfig",
    "ClientStatistics",
    "CloseCode",
    "ClosedError",
    "Connected",
    "ConnectionClosed",
    "ConnectionState",
    "Disconnected",
    "ErrorCode",
    "GenesisApp",
    "GenesisError",
    "GenesisHybridSystem",
    "HandshakeError",
    "HubConfig",
    "HubStatistics",
    "LinkEvent",
    "LocalProtocolError",
    "Message",
    "RemoteError",
    "RemoteProtocolError",
    "RequestTimeout",
    "SendTimeout",
    "ServeInfo",
    "TranscendentalExternalWebSocket",
    "TranscendentalWebSocket",
    "backoff",
    "create_app",
    "serve_hub",
]
