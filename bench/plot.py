"""The PNG plot (docs/benchmarks.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.results import Results
from bench.targets import (
    AIOHTTP,
    BASELINES,
    HUB,
    HUB_MEM,
    HYPERCORN,
    SOCKETIO,
    TARGETS,
    TRIO_WEBSOCKET,
    WEBSOCKETS,
)
from bench.workloads import Profile

COLORS = {
    HYPERCORN: "#9e9e9e",
    AIOHTTP: "#1f77b4",
    WEBSOCKETS: "#2ca02c",
    TRIO_WEBSOCKET: "#8c564b",
    SOCKETIO: "#9467bd",
    HUB: "#d62728",
    HUB_MEM: "#ff7f0e",
    "py": "#ff9896",
}


def plot(results: Results, profile: Profile, path: Path) -> None:
    """Throughput per server and workload (left), the hub's batching curves (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    _throughput(left, results, profile)
    _batching(right, results, profile)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(ax: Any, results: Results, profile: Profile) -> None:
    workloads: list[tuple[str, str, dict[str, int]]] = [
        ("A", "A\nround trips", {}),
        ("B", "B 64 B\npipelined", {"size": 64, "k": 1}),
    ]
    workloads += [
        ("B", f"B {s // 1024} KiB\npipelined", {"size": s, "k": 1})
        for s in profile.sizes
        if s != 64
    ]
    workloads += [
        ("C", f"C {profile.c_conns}\nconns", {}),
        ("D", f"D 1→{profile.d_subs}\nfan-out", {"k": 1}),
    ]
    series: list[tuple[str, str, list[float | None]]] = [
        (key, TARGETS[key].label, [results.value(key, g, **p) for g, _, p in workloads])
        for key in (*BASELINES, HUB, HUB_MEM)
    ]
    py = [
        results.value(HUB, "py-B", size=p["size"]) if g == "B" else
        results.value(HUB, "py-D") if g == "D" else None
        for g, _, p in workloads
    ]  # fmt: skip
    series.append(("py", "genesis_trio hub (SQLite) + our Python client", py))
    width = 0.8 / len(series)
    for i, (key, label, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(workloads))]
        ax.bar(xs, [v or 0 for v in values], width, label=label, color=COLORS[key])
    ax.set_xticks(range(len(workloads)), [label for _, label, _ in workloads])
    if any(v for _, _, values in series for v in values):
        ax.set_yscale("log")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Throughput, one message per frame (hub: C generator, k=1)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)
    ax.grid(axis="y", alpha=0.3)


def _batching(ax: Any, results: Results, profile: Profile) -> None:
    curves = [
        (HUB, "B", sorted(profile.hub_k), {"size": 64}, "o-", "hub B 64 B (SQLite)"),
        (HUB, "D", sorted(profile.fanout_k), {}, "s--", "hub D fan-out (SQLite)"),
        (HUB_MEM, "B", sorted(profile.mem_k), {"size": 64}, "o-", "hub B 64 B (--store none)"),
        (HUB_MEM, "D", sorted(profile.mem_k), {}, "s--", "hub D fan-out (--store none)"),
    ]
    drawn = False
    for key, group, ks, params, style, label in curves:
        values = [results.value(key, group, k=k, **params) for k in ks]
        if any(values):
            ax.plot(ks, [v or 0 for v in values], style, color=COLORS[key], label=label)
            drawn = True
    last = max(profile.hub_k)
    for key, style in ((AIOHTTP, "-"), (HYPERCORN, ":")):
        for group, params in (("B", {"size": 64, "k": 1}), ("D", {})):
            value = results.value(key, group, **params)
            if value:
                ax.axhline(value, linestyle=style, color=COLORS[key], alpha=0.7, lw=1)
                ax.annotate(
                    f"{key} {group}", (last, value), fontsize=7, ha="right", va="bottom",
                    color=COLORS[key],
                )  # fmt: skip
    ks = sorted(set(profile.hub_k) | set(profile.fanout_k))
    ax.set_xscale("log", base=2)
    if drawn:
        ax.set_yscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("messages per client frame (k)")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Hub: batching")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
