"""genesis_trio: resilient real-time messaging over WebSockets, on Trio.

Components connect to a hub, address each other by id or topic, and keep
talking through dropped links and hub restarts: every message is delivered
exactly once and in order, per session and direction (docs/guarantees.md).
"""

from ._api.routes import TranscendentalAPI as TranscendentalAPI
from ._client.client import TranscendentalWebSocket as TranscendentalWebSocket
from ._client.types import ClientStatistics as ClientStatistics
from ._client.types import Connected as Connected
from ._client.types import ConnectionState as ConnectionState
from ._client.types import Disconnected as Disconnected
from ._client.types import LinkEvent as LinkEvent
from ._core.backoff import CircuitBreaker as CircuitBreaker
from ._core.backoff import backoff as backoff
from ._core.codec import JSON_SUBPROTOCOL as JSON_SUBPROTOCOL
from ._core.codec import MSGPACK_SUBPROTOCOL as MSGPACK_SUBPROTOCOL
from ._core.config import ClientConfig as ClientConfig
from ._core.config import HubConfig as HubConfig
from ._core.errors import CircuitOpenError as CircuitOpenError
from ._core.errors import CloseCode as CloseCode
from ._core.errors import ClosedError as ClosedError
from ._core.errors import ConnectionClosed as ConnectionClosed
from ._core.errors import ErrorCode as ErrorCode
from ._core.errors import GenesisError as GenesisError
from ._core.errors import HandshakeError as HandshakeError
from ._core.errors import LocalProtocolError as LocalProtocolError
from ._core.errors import RemoteError as RemoteError
from ._core.errors import RemoteProtocolError as RemoteProtocolError
from ._core.errors import RequestTimeout as RequestTimeout
from ._core.errors import SendTimeout as SendTimeout
from ._core.errors import UnknownComponent as UnknownComponent
from ._core.frames import PRESENCE_TOPIC as PRESENCE_TOPIC
from ._core.message import Message as Message
from ._core.version import VERSION
from ._hub.auth import Authenticator as Authenticator
from ._hub.auth import Authorizer as Authorizer
from ._hub.auth import AuthRefused as AuthRefused
from ._hub.auth import AuthRequest as AuthRequest
from ._hub.auth import Identity as Identity
from ._hub.auth import JWTAuthenticator as JWTAuthenticator
from ._hub.auth import PatternAuthorizer as PatternAuthorizer
from ._hub.auth import StaticTokens as StaticTokens
from ._hub.hub import TranscendentalExternalWebSocket as TranscendentalExternalWebSocket
from ._hub.local import LocalComponent as LocalComponent
from ._hub.presence import PresenceEvent as PresenceEvent
from ._hub.stats import ComponentInfo as ComponentInfo
from ._hub.stats import HubStatistics as HubStatistics
from ._hub.stats import LocalStatistics as LocalStatistics
from ._system.app import GenesisApp as GenesisApp
from ._system.app import create_app as create_app
from ._system.hybrid import GenesisHybridSystem as GenesisHybridSystem
from ._system.serve import ServeInfo as ServeInfo
from ._system.serve import serve_hub as serve_hub
from .stores import MemoryStore as MemoryStore
from .stores import SessionStore as SessionStore
from .stores import SQLiteStore as SQLiteStore
from .stores import StoreError as StoreError

__version__ = VERSION

__all__ = [
    "JSON_SUBPROTOCOL",
    "MSGPACK_SUBPROTOCOL",
    "PRESENCE_TOPIC",
    "AuthRefused",
    "AuthRequest",
    "Authenticator",
    "Authorizer",
    "CircuitBreaker",
    "CircuitOpenError",
    "ClientConfig",
    "ClientStatistics",
    "CloseCode",
    "ClosedError",
    "ComponentInfo",
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
    "Identity",
    "JWTAuthenticator",
    "LinkEvent",
    "LocalComponent",
    "LocalProtocolError",
    "LocalStatistics",
    "MemoryStore",
    "Message",
    "PatternAuthorizer",
    "PresenceEvent",
    "RemoteError",
    "RemoteProtocolError",
    "RequestTimeout",
    "SQLiteStore",
    "SendTimeout",
    "ServeInfo",
    "SessionStore",
    "StaticTokens",
    "StoreError",
    "TranscendentalAPI",
    "TranscendentalExternalWebSocket",
    "TranscendentalWebSocket",
    "UnknownComponent",
    "backoff",
    "create_app",
    "serve_hub",
]
