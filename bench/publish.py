"""Turn bench/results/*.json into the Benchmarks page and its plots.

Writes ``docs/bench/results.md`` (every scenario's table, every target met or
not, the machine) and PNG plots next to it:

- ``throughput.png``: throughput per scenario per system;
- ``epoch_hit_rate.png``: hit rate per epoch per policy against the
  cache/dataset bound;
- ``wait_time.png``: time waiting for data per epoch, per system;
- ``loader_peers.png``: samples/s per epoch per system, and origin bytes ÷
  dataset per epoch at cache = half the dataset against the bound;
- ``cluster_model.png``: the cluster model against real node processes,
  and its projection to 760 nodes;
- ``user_paths.png``: every targeted ratio of the ``user_*`` scenarios
  (paths users take, issue 12) against its target.

Run ``python -m bench.publish`` after ``python -m bench``; ``python -m bench``
also calls it at the end of a run.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.causes import cause_of
from bench.report import Row, format_table

__all__ = ["DOCS_DIR", "main", "publish"]

ROOT = Path(__file__).resolve().parents[1]
DOCS_DIR = ROOT / "docs" / "bench"
RESULTS_DIR = ROOT / "bench" / "results"


def _load(results_dir: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return docs


def _rows(doc: dict[str, Any]) -> list[Row]:
    return [Row(**row) for row in doc["rows"]]


# One colour per system, the same in every plot. Matched by substring, first
# match wins; cachefs's own variants (readahead, prefetch, compression=…)
# share its orange.
_PALETTE: tuple[tuple[str, str], ...] = (
    ("cachefs", "#e8710a"),
    ("shardDataset", "#e8710a"),
    ("compression", "#e8710a"),
    ("simplecache", "#1f77b4"),
    ("filecache", "#17becf"),
    ("blockcache", "#9467bd"),
    ("juicefs", "#bcbd22"),
    ("s3torchconnector", "#e377c2"),
    ("obstore", "#006d5b"),
    ("zero-copy", "#333333"),
    ("litdata", "#2ca02c"),
    ("mosaic", "#d62728"),
    ("streaming", "#d62728"),
    ("webdataset", "#8c564b"),
    ("memcpy", "#333333"),
    ("copyto", "#333333"),
    ("local", "#333333"),
    ("ceiling", "#333333"),
    ("bound", "#333333"),
    ("model", "#7f7f7f"),
)
_OTHER = "#a0a0a0"  # plain fsspec, s3fs, http: the baseline
_FONT = 12


def _color(system: str) -> str:
    """Return the plot colour of a system (see :data:`_PALETTE`)."""
    low = system.lower()
    for needle, colour in _PALETTE:
        if needle.lower() in low:
            return colour
    return _OTHER


def _wrap(text: str, width: int = 38) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _pyplot() -> Any:
    """Return ``matplotlib.pyplot`` on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticker() -> Any:
    """Return ``matplotlib.ticker``."""
    import matplotlib.ticker

    return matplotlib.ticker


def _save(plt: Any, fig: Any, path: Path, dpi: int = 100) -> Path:
    """Lay out, write and close ``fig``; return where it went."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def crowded(fig: Any) -> list[str]:
    """Return what is unreadable in ``fig`` once drawn.

    Overlapping y tick labels, and legends in smaller type than their axes'
    labels; an empty list when neither occurs.
    """
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        labels = [t for t in ax.get_yticklabels() if t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        for i in range(1, len(boxes)):
            if boxes[i - 1].overlaps(boxes[i]):
                pair = f"{labels[i - 1].get_text()!r} / {labels[i].get_text()!r}"
                found.append(f"y labels overlap: {pair}")
        legend = ax.get_legend()
        if legend is not None:
            size = min(t.get_fontsize() for t in legend.get_texts())
            if size < ax.xaxis.label.get_fontsize():
                found.append(f"legend type {size} < axis label type")
    return found


def _plot_throughput(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    made = _throughput_figure(docs)
    if made is None:
        return None
    return _save(made[0], made[1], out / "throughput.png", dpi=100)


def _throughput_figure(docs: Sequence[dict[str, Any]]) -> tuple[Any, Any] | None:
    plt = _pyplot()

    panels = []
    for doc in docs:
        bars: list[tuple[str, str, float]] = []
        for row in _rows(doc):
            if row.unit in ("GB/s", "MB/s") and row.value == row.value:
                scale = 1000.0 if row.unit == "GB/s" else 1.0
                bars.append((row.row, row.system, row.value * scale))
        if bars:
            mode = "quick" if doc.get("quick") else "full"
            panels.append((f"{doc['scenario']} ({mode})", bars))
    if not panels:
        return None
    # Each panel as tall as its labels need (a wrapped label takes two
    # lines): with equal heights, a panel of many two-line labels (the
    # compression scenario's 18) was squeezed until its labels overlapped.
    wrapped = [[_wrap(f"{system} — {row}") for row, system, _ in b] for _, b in panels]
    bar_heights = [
        sum(0.12 + 0.2 * (1 + lab.count("\n")) for lab in labs) for labs in wrapped
    ]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, sum(1.3 + h for h in bar_heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": bar_heights},
    )
    for ax, (name, bars), labels in zip(axes[:, 0], panels, wrapped, strict=True):
        values = [v for _, _, v in bars]
        drawn = ax.barh(labels, values, color=[_color(system) for _, system, _ in bars])
        ax.bar_label(drawn, fmt="%.0f", padding=3, fontsize=_FONT - 2)
        spread = max(values) / max(min(v for v in values if v > 0), 1e-9)
        if spread > 50:  # several decades: log, with a label on every decade
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(_ticker().FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlim(right=max(values) * (3 if spread > 50 else 1.18))
        ax.set_xlabel("MB/s (cachefs in orange)", fontsize=_FONT)
        ax.set_title(name, fontsize=_FONT + 1, loc="left")
        ax.invert_yaxis()
        ax.tick_params(axis="both", labelsize=_FONT - 2)
    return plt, fig


def _plot_epochs(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    doc = next((d for d in docs if d["scenario"] == "epoch_scan"), None)
    if doc is None:
        return None
    plt = _pyplot()

    series: dict[str, list[float]] = defaultdict(list)
    bound = None
    for row in _rows(doc):
        series[row.system].append(row.value)
        bound = row.detail.get("bound", bound)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for system, values in series.items():
        ax.plot(
            range(1, len(values) + 1),
            values,
            marker="o",
            label=system,
            color=_color(system) if "lru" not in system else "#1f77b4",
        )
    if bound is not None:
        ax.axhline(bound, linestyle="--", color="black", label="bound: cache/dataset")
    ax.set_xticks(range(1, 1 + max(len(v) for v in series.values())))
    mode = "quick" if doc.get("quick") else "full"
    ax.set_xlabel("epoch", fontsize=_FONT)
    ax.set_ylabel("hit rate (from origin bytes)", fontsize=_FONT)
    ax.set_ylim(0, 1)
    ax.set_title(f"Shuffled epoch scans, dataset = 2x disk budget ({mode})")
    ax.tick_params(labelsize=_FONT - 1)
    ax.legend(fontsize=_FONT - 2)
    return _save(plt, fig, out / "epoch_hit_rate.png", dpi=100)


def _plot_wait(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    series: dict[str, list[float]] = defaultdict(list)
    for doc in docs:
        for row in _rows(doc):
            epoch = row.detail.get("epoch")
            wait = row.detail.get("wait_seconds")
            if epoch is not None and wait is not None:
                series[f"{doc['scenario']}: {row.system}"].append(float(wait))
    if not series:
        return None
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for system, values in series.items():
        ax.plot(
            range(1, len(values) + 1),
            values,
            marker="o",
            label=system,
            color=_color(system.split(": ", 1)[-1]),
        )
    ax.set_xticks(range(1, 1 + max(len(v) for v in series.values())))
    ax.set_xlabel("epoch", fontsize=_FONT)
    ax.set_ylabel("seconds waiting for data", fontsize=_FONT)
    ax.set_title("Data-loader wait per epoch")
    ax.tick_params(labelsize=_FONT - 1)
    ax.legend(fontsize=_FONT - 2)
    return _save(plt, fig, out / "wait_time.png", dpi=100)


def _plot_loader_peers(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Samples/s and origin ÷ dataset per epoch for cachefs and its peers."""
    made = _loader_peers_figure(docs)
    if made is None:
        return None
    return _save(made[0], made[1], out / "loader_peers.png", dpi=100)


def _loader_peers_figure(docs: Sequence[dict[str, Any]]) -> tuple[Any, Any] | None:
    doc = next((d for d in docs if d["scenario"] == "loader_peers"), None)
    if doc is None:
        return None
    plt = _pyplot()

    rate: dict[str, dict[int, float]] = defaultdict(dict)
    origin: dict[str, dict[int, float]] = defaultdict(dict)
    bound = None
    for row in _rows(doc):
        config, epoch = row.detail.get("config"), row.detail.get("epoch")
        if epoch is None:
            continue
        key = f"{row.system} ({'cache = half' if config == 'half' else 'big cache'})"
        if row.unit == "samples/s":
            rate[key][epoch] = row.value
        elif row.unit == "x dataset" and config == "half":
            origin[row.system][epoch] = row.value
            bound = row.detail.get("bound", bound)
    if not rate:
        return None

    def style(system: str) -> dict[str, Any]:
        # Two cachefs paths: ShardDataset in orange, webdataset over
        # cachefs:: in a lighter orange, dashed.
        if "webdataset" in system and "cachefs" in system:
            return {"color": "#f5b041", "linestyle": "--"}
        return {"color": _color(system), "linestyle": "-"}

    # Legends go below their plots in the axis labels' type: inside, in
    # smaller type, the left one (8 entries) covered the lines and could not
    # be read at the page's width.
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 8.5))
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.14), "fontsize": _FONT}
    for key, values in rate.items():
        epochs = sorted(values)
        look = style(key)
        if "cache = half" in key:
            look["linestyle"] = ":"
        left.plot(epochs, [values[e] for e in epochs], marker="o", label=key, **look)
    left.set_xlabel("epoch (0 = cold)", fontsize=_FONT)
    left.set_ylabel("samples/s (2 workers, batch 32)", fontsize=_FONT)
    left.set_title("Samples/s per epoch", fontsize=_FONT + 1, loc="left")
    left.legend(**below)
    for system, values in origin.items():
        epochs = sorted(values)
        right.plot(
            epochs,
            [values[e] for e in epochs],
            marker="o",
            label=system,
            **style(system),
        )
    if bound is not None:
        right.axhline(
            bound, linestyle="--", color="black", label="bound: 1 - cache/dataset"
        )
    right.set_xlabel("epoch (0 = cold)", fontsize=_FONT)
    right.set_ylabel("origin bytes ÷ dataset", fontsize=_FONT)
    right.set_title("Cache = half the dataset", fontsize=_FONT + 1, loc="left")
    right.set_ylim(bottom=0)
    right.legend(**below)
    for ax in (left, right):
        ax.tick_params(labelsize=_FONT - 1)
        ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))
    mode = "quick" if doc.get("quick") else "full"
    fig.suptitle(f"loader_peers ({mode}): S3 via a 20 ms proxy", fontsize=_FONT + 1)
    return plt, fig


def _is_cachefs(system: str) -> bool:
    return _color(system) == _color("cachefs")


def _winners(docs: Sequence[dict[str, Any]]) -> list[str]:
    """Lines of a table: per row, cachefs's best against the best peer.

    Only rows that compare cachefs with at least one peer in the same unit;
    physical limits (memcpy, local reads, ceilings, bounds) are not peers.
    """
    lines = [
        "| scenario | row | best cachefs | best peer | cachefs ÷ peer | winner |",
        "|---|---|---|---|---|---|",
    ]
    limits = ("memcpy", "copyto", "local", "ceiling", "bound", "model", "zero-copy")
    for doc in docs:
        mode = "quick" if doc.get("quick") else "full"
        groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for row in _rows(doc):
            if row.value == row.value:  # not NaN
                groups[(row.row, row.unit)].append(row)
        for (label, unit), rows in groups.items():
            # A zero-copy view is not a read a peer offers: compare copies.
            ours = [r for r in rows if _is_cachefs(r.system) and "view" not in r.system]
            peers = [
                r
                for r in rows
                if not _is_cachefs(r.system)
                and not any(w in r.system.lower() for w in limits)
            ]
            if not ours or not peers:
                continue
            pick = max if rows[0].higher_is_better else min
            best = pick(ours, key=lambda r: r.value)
            peer = pick(peers, key=lambda r: r.value)
            if not peer.value or not best.value:
                continue
            ratio = (
                best.value / peer.value
                if best.higher_is_better
                else peer.value / best.value
            )
            winner = "cachefs" if ratio >= 1 else peer.system
            lines.append(
                f"| {doc['scenario']} ({mode}) | {label} | {best.system} "
                f"{best.value:.3g} {unit} | {peer.system} {peer.value:.3g} {unit} "
                f"| {ratio:.2f}x | {winner} |"
            )
    return lines if len(lines) > 2 else []


def _reporting(doc: dict[str, Any]) -> str:
    """Say what the VM's free page reporting did during a scenario's run."""
    state = str(doc.get("machine", {}).get("free_page_reporting", "not recorded"))
    during = doc.get("params", {}).get("page_reporting_mib_during")
    if during is not None:
        state += f", {during} MiB handed back to the host during the run"
    return state


def publish(results_dir: Path | None = None, out: Path = DOCS_DIR) -> Path:
    """Write the results page and plots; return the page's path."""
    docs = _load(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        plots = []
    else:
        found = (
            _plot_throughput(docs, out),
            _plot_epochs(docs, out),
            _plot_wait(docs, out),
            _plot_loader_peers(docs, out),
            _plot_cluster(docs, out),
            _plot_user_paths(docs, out),
        )
        plots = [p for p in found if p is not None]
    lines = [
        "# Measured results",
        "",
        "Written by `python -m bench` (see [Benchmarks](index.md) for what each",
        "scenario measures). Every system of a scenario ran in the same process",
        "run, interleaved and repeated; values are medians. Ratios are the",
        "figures to read: absolute numbers on shared machines are noise.",
        "",
    ]
    targets = [
        (doc["scenario"], row)
        for doc in docs
        for row in _rows(doc)
        if row.target is not None
    ]
    met = sum(1 for _, row in targets if row.met)
    lines += [
        "## Targets",
        "",
        f"{met} of {len(targets)} targets met.",
        "",
        "| scenario | row | system | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    modes = {d["scenario"]: "quick" if d.get("quick") else "full" for d in docs}
    for scenario, row in targets:
        verdict = "MET" if row.met else "**UNMET**"
        ratio = f"{row.ratio:.2f}x vs {row.reference}" if row.ratio is not None else "-"
        lines.append(
            f"| {scenario} ({modes[scenario]}) | {row.row} | {row.system} | {ratio} "
            f"| {row.target} | {verdict} |"
        )
    lines.append("")
    unmet_rows = [(scenario, row) for scenario, row in targets if not row.met]
    if unmet_rows:
        lines += ["### Why unmet", ""]
        seen: set[tuple[str, str]] = set()
        for scenario, row in unmet_rows:
            if (scenario, row.row) not in seen:
                seen.add((scenario, row.row))
                why = cause_of(scenario, row.row)
                lines.append(f"- **{scenario}, {row.row}**: {why}")
        lines.append("")
    winners = _winners(docs)
    if winners:
        lines += [
            "## Who wins where",
            "",
            "For every row that measures cachefs beside a peer a user could pick",
            "instead (physical limits are not peers), cachefs's best system",
            "against the best peer; above 1x cachefs is ahead. Each scenario's",
            "mode is in brackets: a `quick` run uses small data and few",
            "repetitions, so its ratios carry more noise than a `full` one.",
            "",
            *winners,
            "",
        ]
    for path in plots:
        lines += [f"![{path.stem}]({path.name})", ""]
    for doc in docs:
        mode = "quick" if doc.get("quick") else "full"
        machine = doc.get("machine", {})
        lines += [
            f"## {doc['scenario']} ({mode})",
            "",
            f"Run {doc.get('started_at', '?')}, {doc.get('duration_s', '?')} s, on "
            f"{machine.get('cpu_model', '?')} ({machine.get('cpus_usable', '?')} "
            f"usable cores), Python {machine.get('python', '?')}, "
            f"load {machine.get('loadavg', '?')}; free page reporting: "
            f"{_reporting(doc)}.",
            "",
            format_table(_rows(doc)),
            "",
        ]
        configuration = _configuration(doc)
        if configuration:
            lines += [configuration, ""]
    page = out / "results.md"
    page.write_text("\n".join(lines))
    return page


def _configuration(doc: dict[str, Any]) -> str:
    """Say the workload configuration a scenario ran (DLIO's), or ""."""
    rows = doc.get("rows") or [{}]
    detail = rows[0].get("detail") or {}
    if "workload" not in detail:
        return ""
    shown = ", ".join(
        f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
        for k, v in detail.items()
        if k != "workload" and not isinstance(v, dict)
    )
    moved = detail.get("origin_bytes") or {}
    origin = ", ".join(f"{k} {v:,}" for k, v in moved.items())
    return (
        f"Configuration: DLIO workload `{detail['workload']}` unchanged except "
        f"{shown}. Origin bytes: {origin or '-'}."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Publish the results found in bench/results."""
    page = publish()
    print(f"wrote {page}")
    return 0


def _plot_cluster(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Plot the cluster model: validation (model vs measured) and projection.

    Left: per validation run and epoch, origin fraction and disk hit rate,
    model beside measured. Right: the projection's per-GPU bandwidth and
    origin traffic per epoch per case, against the 1 GB/s-per-GPU aim.
    """
    doc = next((d for d in docs if d["scenario"] == "cluster"), None)
    if doc is None:
        return None
    plt = _pyplot()

    rows = _rows(doc)
    checks = [
        r for r in rows if r.detail.get("metric") in ("origin", "disk hit") and r.detail
    ]
    bandwidth = [r for r in rows if r.unit == "GB/s per GPU"]
    origin = [r for r in rows if r.unit == "PB/epoch"]
    if not checks or not bandwidth:
        return None
    fig, (ax1, ax2, ax3) = plt.subplots(
        3,
        1,
        figsize=(9, 4 + 0.32 * len(checks) + 0.5 * len(bandwidth)),
        gridspec_kw={"height_ratios": [len(checks), len(bandwidth), len(origin)]},
    )
    labels = [r.row for r in checks]
    pos = list(range(len(checks)))
    h = 0.4
    model = ax1.barh(
        [p - h / 2 for p in pos],
        [r.value for r in checks],
        h,
        color=_color("model"),
        label="model",
    )
    measured = ax1.barh(
        [p + h / 2 for p in pos],
        [r.detail["measured"] for r in checks],
        h,
        color=_color("cachefs"),
        label="measured (cachefs)",
    )
    for bars in (model, measured):
        ax1.bar_label(bars, fmt="%.2f", padding=2, fontsize=_FONT - 3)
    ax1.set_yticks(pos, labels)
    ax1.set_xlim(0, 1.2)
    ax1.set_xlabel("fraction of the bytes read", fontsize=_FONT)
    mode = "quick" if doc.get("quick") else "full"
    ax1.set_title(f"Validation: model vs measured ({mode})", fontsize=_FONT + 1)
    ax1.legend(fontsize=_FONT - 2, loc="lower right")
    for ax, data, unit, fmt in (
        (ax2, bandwidth, "GB/s per GPU (dashed: aim 1 GB/s)", "%.2f"),
        (ax3, origin, "origin PB per epoch", "%.3g"),
    ):
        names = [r.row.rsplit(":", 1)[0] for r in data]
        drawn = ax.barh(names, [r.value for r in data], color=_color("model"))
        ax.bar_label(drawn, fmt=fmt, padding=3, fontsize=_FONT - 2)
        ax.set_xlabel(unit, fontsize=_FONT)
        ax.set_xlim(right=max(r.value for r in data) * 1.25 or 1)
        ax.invert_yaxis()
        if ax is ax2:
            ax.axvline(1.0, color="black", linestyle="--")
            ax.set_title("Projection: 760 nodes x 8 GPUs", fontsize=_FONT + 1)
    ax1.invert_yaxis()
    for ax in (ax1, ax2, ax3):
        ax.tick_params(labelsize=_FONT - 2)
    return _save(plt, fig, out / "cluster_model.png", dpi=100)


def _plot_user_paths(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Targeted ratios of the ``user_*`` scenarios, each beside its target."""
    bars: list[tuple[str, float, float, bool]] = []
    for doc in docs:
        if not doc["scenario"].startswith("user_"):
            continue
        for row in _rows(doc):
            if row.target is None or row.ratio is None or row.ratio != row.ratio:
                continue
            bound = float(row.target.split()[1].rstrip("x"))
            label = f"{doc['scenario']}: {row.system} vs {row.reference}"
            bars.append((label, min(row.ratio, 10.0), bound, bool(row.met)))
    if not bars:
        return None
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(bars)))
    labels = [_wrap(label, 60) for label, _, _, _ in bars]
    ys = range(len(bars))
    colours = ["#2ca02c" if met else "#d62728" for _, _, _, met in bars]
    drawn = ax.barh(list(ys), [r for _, r, _, _ in bars], color=colours)
    ax.bar_label(drawn, fmt="%.2fx", padding=3, fontsize=_FONT - 2)
    for y, (_, _, bound, _) in zip(ys, bars, strict=True):
        ax.plot([bound, bound], [y - 0.4, y + 0.4], color="black", linewidth=2)
    ax.set_yticks(list(ys), labels, fontsize=_FONT - 3)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (> 1: cachefs better); black tick: target", fontsize=_FONT)
    ax.set_title(
        "User paths (issue 12): green met, red unmet", fontsize=_FONT + 1, loc="left"
    )
    ax.tick_params(axis="x", labelsize=_FONT - 1)
    return _save(plt, fig, out / "user_paths.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
