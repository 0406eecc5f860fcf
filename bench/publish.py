"""Turn bench/results/*.json into the Benchmarks page and its plots.

Writes ``docs/bench/results.md`` (every scenario's table, every target met or
not, the machine) and PNG plots next to it:

- ``throughput.png``: throughput per scenario per system;
- ``epoch_hit_rate.png``: hit rate per epoch per policy against the
  cache/dataset bound;
- ``wait_time.png``: time waiting for data per epoch, per system.

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


def _plot_throughput(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for doc in docs:
        bars: dict[str, float] = {}
        for row in _rows(doc):
            if row.unit in ("GB/s", "MB/s"):
                scale = 1000.0 if row.unit == "GB/s" else 1.0
                bars[f"{row.row}: {row.system}"] = row.value * scale
        if bars:
            panels.append((doc["scenario"], bars))
    if not panels:
        return None
    height = sum(max(2.0, 0.32 * len(b)) for _, b in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, height), squeeze=False)
    for ax, (name, bars) in zip(axes[:, 0], panels, strict=True):
        labels = list(bars)
        colors = ["tab:orange" if "cachefs" in lab else "tab:gray" for lab in labels]
        ax.barh(labels, [bars[lab] for lab in labels], color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("MB/s (log scale; cachefs in orange)")
        ax.set_title(name)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_epochs(docs: Sequence[dict[str, Any]], out: Path) -> Path | None:
    doc = next((d for d in docs if d["scenario"] == "epoch_scan"), None)
    if doc is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[float]] = defaultdict(list)
    bound = None
    for row in _rows(doc):
        series[row.system].append(row.value)
        bound = row.detail.get("bound", bound)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for system, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=system)
    if bound is not None:
        ax.axhline(bound, linestyle="--", color="black", label="bound: cache/dataset")
    ax.set_xticks(range(1, 1 + max(len(v) for v in series.values())))
    ax.set_xlabel("epoch")
    ax.set_ylabel("hit rate (from origin bytes)")
    ax.set_ylim(0, 1)
    ax.set_title("Shuffled epoch scans, dataset = 2x disk budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "epoch_hit_rate.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for system, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=system)
    ax.set_xticks(range(1, 1 + max(len(v) for v in series.values())))
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds waiting for data")
    ax.set_title("Data-loader wait per epoch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "wait_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    for scenario, row in targets:
        verdict = "MET" if row.met else "**UNMET**"
        ratio = f"{row.ratio:.2f}x vs {row.reference}" if row.ratio is not None else "-"
        lines.append(
            f"| {scenario} | {row.row} | {row.system} | {ratio} | {row.target} "
            f"| {verdict} |"
        )
    lines.append("")
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
            f"load {machine.get('loadavg', '?')}.",
            "",
            format_table(_rows(doc)),
            "",
        ]
    page = out / "results.md"
    page.write_text("\n".join(lines))
    return page


def main(argv: Sequence[str] | None = None) -> int:
    """Publish the results found in bench/results."""
    page = publish()
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
