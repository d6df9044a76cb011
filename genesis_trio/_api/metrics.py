"""``GET /metrics``: the hub's statistics in the Prometheus text format.

A custom collector reads :meth:`~genesis_trio.TranscendentalExternalWebSocket.get_stats`
and :meth:`~genesis_trio.TranscendentalExternalWebSocket.histograms` at
scrape time, so ``/metrics``, ``/api/stats`` and ``get_stats()`` give the
same numbers at the same instant; ``prometheus-client`` does the exposition.
Every statistic is ``genesis_trio_<name>`` (counters get ``_total``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .._hub.hub import TranscendentalExternalWebSocket

PREFIX: Final = "genesis_trio_"
GAUGES: Final = frozenset(
    {
        "active_connections",
        "sessions",
        "collapse_factor",
        "rtt_ewma_ms",
        "rtt_p99_ms",
        "store_healthy",
        "retained_bytes",
    }
)
"""Statistics that go up and down; every other number is a counter."""
LABELS: Final = frozenset({"node_id", "store"})
"""Statistics that are names: labels of ``genesis_trio_hub_info``."""
HISTOGRAM_HELP: Final = {
    "delivery_latency_seconds": "Hub receive to frame written, per message",
    "delivery_frame_messages": "Messages per delivery frame written",
    "heartbeat_rtt_seconds": "Heartbeat round trips",
    "store_commit_seconds": "Session store writes",
    "store_commit_rows": "Rows per session store write",
}


class HubCollector(Collector):
    """Reads one hub's statistics at each scrape."""

    def __init__(self, hub: TranscendentalExternalWebSocket) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        """The metric families, from one ``get_stats()`` snapshot."""
        stats: dict[str, Any] = self.hub.get_stats()
        yield InfoMetricFamily(
            PREFIX + "hub",
            "The hub's node id and session store",
            value={"node": stats["node_id"], "store": stats["store"]},
        )
        for name, value in stats.items():
            if name in LABELS or name == "close_codes":
                continue
            if value is None:
                continue
            number = float(value)
            if name in GAUGES:
                yield GaugeMetricFamily(PREFIX + name, _help(name), value=number)
            else:
                yield CounterMetricFamily(PREFIX + name, _help(name), value=number)
        closed = CounterMetricFamily(
            PREFIX + "links_closed", "Links ended, by close code", labels=["code"]
        )
        for code, count in sorted(stats["close_codes"].items()):
            closed.add_metric([str(code)], count)
        yield closed
        for name, histogram in self.hub.histograms().items():
            buckets = histogram.cumulative()
            yield HistogramMetricFamily(
                PREFIX + name,
                HISTOGRAM_HELP.get(name, name),
                buckets=buckets,
                sum_value=histogram.sum,
            )


def _help(name: str) -> str:
    return f"{name.replace('_', ' ')} (docs/metrics.md)"


class Metrics:
    """The exposition of one hub (a registry of its own, not the process-global one)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, hub: TranscendentalExternalWebSocket) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub))

    def render(self) -> bytes:
        """The text exposition now."""
        return generate_latest(self.registry)
