"""``compression``: the hub accepts permessage-deflate when offered, unless told not to.

A raw client offers the extension as browsers do, over a real socket, and
reads the 101 response: the default negotiates it (and the link carries
compressed frames both ways); ``compression="off"`` answers without it, and
the link works uncompressed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from genesis_trio import HubConfig

from .test_protocol_conformance import RawClient, clients, run


@pytest.mark.parametrize("compression", ["deflate", "off"])
async def test_deflate_is_negotiated_only_when_the_hub_accepts_it(
    hub_factory: Callable[..., Any], compression: str
) -> None:
    running = await hub_factory(compression=compression)

    def scenario(url: str) -> None:
        with clients() as keep:
            client = keep(RawClient.join(url, "squeezed", compression="deflate"))
            answer = client.ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in answer) == (compression == "deflate"), answer
            client.send_msg({"type": "x", "to": "squeezed", "data": "x" * 2000})
            frame = client.next("msg", "batch")
            body = frame["m"] if frame["t"] == "msg" else frame["m"][0]
            assert body["data"] == "x" * 2000

    await run(scenario, running.url)


def test_compression_accepts_deflate_or_off() -> None:
    assert HubConfig().compression == "deflate"
    with pytest.raises(ValueError, match="compression"):
        HubConfig(compression="gzip")
