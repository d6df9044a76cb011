"""On a Redis Cluster (three shards, started by the test): hubs and cluster nodes.

Every key of a prefix carries the hash tag ``{prefix}``: the prefix lives on
one shard, and different prefixes (hubs, or clusters of nodes) spread over
the shards. Real processes: three ``redis-server --cluster-enabled yes``
joined by ``redis-cli --cluster create``, and CLI hubs.
"""

from __future__ import annotations

import contextlib

import pytest
import trio

from .support.cluster import Switchboard, ring_through_a_kill, start_node
from .support.processes import start_cli_hub
from .support.redis import redis_cluster
from .test_cluster import Links, clean, client

pytestmark = [pytest.mark.slow]


@pytest.mark.deadline(90)
async def test_cluster_nodes_on_a_redis_cluster_resume_exactly_after_a_node_dies() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_cluster())
        url = redis.url("genesis")
        nodes = [await stack.enter_async_context(start_node(url, f"n{i}")) for i in range(2)]
        links = Links()
        board = Switchboard()
        urls = [n.url for n in nodes]
        names = ["p0", "p1", "p2", "p3"]  # p0, p2 on n0; p1, p3 on n1
        clients = [
            await stack.enter_async_context(
                client(urls[i % 2 :] + urls[: i % 2], name, links, board, topics=["t"])
            )
            for i, name in enumerate(names)
        ]
        for n in range(20):  # a publish reaches the subscribers on both nodes, in order
            await clients[0].publish("t", "tick", n)
        for ws in clients:
            assert [(await ws.receive()).data for _ in range(20)] == list(range(20))

        await ring_through_a_kill(clients, nodes[0], after=300, messages=600)
        with trio.fail_after(10):  # the Connected event may trail the last delivery
            await links.wait("p0", 2)
            await links.wait("p2", 2)
        resumes = [e for name, e in links.events if not e.first]
        assert {name for name, e in links.events if not e.first} >= {"p0", "p2"}
        assert all(e.recovered for e in resumes), resumes
        counts = await redis.key_counts()
        assert sorted(c > 0 for c in counts) == [False, False, True], counts  # one shard
        clean(nodes[1])


@pytest.mark.deadline(60)
async def test_hubs_with_their_own_prefixes_spread_over_the_shards() -> None:
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_cluster())
        links = Links()
        for prefix in ("a", "b"):  # CLUSTER KEYSLOT {a} = 15495, {b} = 3300: two shards
            hub = await stack.enter_async_context(start_cli_hub("--store", redis.url(prefix)))
            ws = await stack.enter_async_context(client([hub.url], "x", links))
            await ws.send("x", "ping", prefix)
            assert (await ws.receive()).data == prefix
            clean(hub)
        counts = await redis.key_counts()
        assert sorted(c > 0 for c in counts) == [False, True, True], counts
