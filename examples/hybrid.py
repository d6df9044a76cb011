"""A hybrid system: hub, HTTP API, an in-process service and external clients on one scheduler.

Run: ``python examples/hybrid.py`` (it picks a free port, runs a short
scenario and exits). What it shows:

* ``GenesisHybridSystem`` serving the hub and its HTTP API;
* an in-process component (``pricing``) answering requests and publishing;
* external clients (``TranscendentalWebSocket``) talking to it over WebSockets,
  one of them watching ``$presence``;
* a backend using the HTTP API with ``httpx``: stats, components, a request
  to the in-process service, a publish.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import trio

from genesis_trio import PRESENCE_TOPIC, GenesisHybridSystem, Message, TranscendentalWebSocket


async def main(port: int = 0) -> dict[str, Any]:
    """Run the scenario; return what each part saw."""
    seen: dict[str, Any] = {}
    async with GenesisHybridSystem(port=port) as system:
        assert system.info is not None
        ws_url, http_url = system.info.ws_url, system.info.http_url
        async with TranscendentalWebSocket(ws_url, "watcher", topics=[PRESENCE_TOPIC]) as watcher:
            pricing = await system.start_local("pricing", topics=["orders"])

            @pricing.on("quote")
            async def quote(message: Message) -> dict[str, Any]:
                return {"item": message.data["item"], "price": 42}

            async with TranscendentalWebSocket(ws_url, "shop", topics=["prices"]) as shop:
                seen["quote"] = await shop.request("pricing", "quote", {"item": "tea"})
                await shop.publish("orders", "order", {"item": "tea"})
                order = await pricing.receive()
                seen["order"] = (order.sender, order.data)
                await pricing.publish("prices", "tick", {"tea": 42})
                seen["tick"] = (await shop.receive()).data

                async with httpx.AsyncClient(base_url=http_url) as api:
                    stats = (await api.get("/api/stats")).json()
                    seen["sessions"] = stats["sessions"]
                    page = (await api.get("/api/components")).json()
                    seen["components"] = [(c["id"], c["local"]) for c in page["items"]]
                    reply = await api.post(
                        "/api/components/pricing/requests",
                        json={"type": "quote", "data": {"item": "coffee"}, "timeout": 5},
                    )
                    seen["api_quote"] = reply.json()["data"]
                    published = await api.post(
                        "/api/topics/prices/messages", json={"type": "tick", "data": {"coffee": 40}}
                    )
                    seen["api_publish"] = published.json()["subscribers"]
                    seen["api_tick"] = (await shop.receive()).data
                    seen["ready"] = (await api.get("/ready")).status_code

            joined = set()
            while not {"pricing", "shop"} <= joined:
                event = (await watcher.receive()).data
                if event["event"] in ("connected", "resumed"):
                    joined.add(event["id"])
            seen["presence"] = sorted(joined - {"watcher"})
    return seen


if __name__ == "__main__":
    for key, value in trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 0).items():
        print(f"{key}: {value}")
