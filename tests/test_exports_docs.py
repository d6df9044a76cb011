"""The public surface: exports, docstrings, and docs that name every metric."""

from __future__ import annotations

import pathlib

import attrs

import genesis_trio
import genesis_trio.testing
from genesis_trio import ClientStatistics, HubStatistics

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_all_exports_exist_and_are_documented() -> None:
    for module in (genesis_trio, genesis_trio.testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) or isinstance(obj, type):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
    assert sorted(genesis_trio.__all__) == sorted(set(genesis_trio.__all__))


def test_seed_api_names_are_public() -> None:
    client = genesis_trio.TranscendentalWebSocket
    hub = genesis_trio.TranscendentalExternalWebSocket
    for name in ("connect", "process_message", "run", "send", "request", "subscribe", "get_stats"):
        assert callable(getattr(client, name))
    for name in (
        "handle_connection",
        "send_message_transcendentally",
        "get_stats",
        "_process_message_transcendentally",
    ):
        assert callable(getattr(hub, name))
    assert genesis_trio.GenesisHybridSystem.__doc__


def test_every_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for cls in (HubStatistics, ClientStatistics):
        for field in attrs.fields(cls):
            assert f"`{field.name}`" in text, f"docs/metrics.md does not describe {field.name}"


def test_every_close_code_is_in_the_protocol_doc() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    for code in genesis_trio.CloseCode:
        assert f"| {int(code)} |" in text, f"close code {int(code)} missing from protocol.md"
    for error in genesis_trio.ErrorCode:
        assert f"`{error.value}`" in text, f"error code {error.value} missing from protocol.md"


def test_the_version_is_said_once() -> None:
    """``genesis_trio.__version__`` is the version pyproject.toml gives the package."""
    import pathlib
    import tomllib

    import genesis_trio

    pyproject = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text())["project"]["version"] == genesis_trio.__version__
