"""The examples run against a real hub."""

from __future__ import annotations

import importlib.util
import pathlib
from types import ModuleType

import pytest

from genesis_trio.testing import RunningHub

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_hello_client(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    await load("hello_client").main(hub.url)
    out = capsys.readouterr().out
    assert "2 + 40 = 42" in out
    assert "calculator got 'note' from 'user'" in out


async def test_pubsub(hub: RunningHub, capsys: pytest.CaptureFixture[str]) -> None:
    module = load("pubsub")
    module.COUNT, module.INTERVAL = 40, 0.0
    await module.main(hub.url)
    assert "all ticks received exactly once, in order" in capsys.readouterr().out


def test_embedded_hub_module_loads() -> None:
    assert callable(load("embedded_hub").main)
