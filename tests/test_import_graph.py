"""The package's imports run one way: no circle, no upward import.

The layers are declared in ``cachefs.testing.import_graph.LAYERS``; the graph
on docs/architecture.md is generated from the same code and must be current.
"""

from __future__ import annotations

from pathlib import Path

from cachefs.testing import import_graph as ig

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def test_no_upward_import_and_no_circle() -> None:
    graph = ig.import_graph(ROOT)
    assert [str(v) for v in ig.violations(graph)] == []
    assert ig.circles(graph) == []


def test_every_module_has_a_layer() -> None:
    graph = ig.import_graph(ROOT)
    assert len(graph) > 30
    assert [m for m in graph if ig.layer_of(m) is None] == []


def test_no_module_over_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / "cachefs").rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 620
    }
    assert long == {}


def test_the_page_shows_the_current_graph() -> None:
    expected = ig.render(ig.import_graph(ROOT))
    assert ig.section(PAGE) == expected, (
        "docs/architecture.md is stale: run "
        "python -m cachefs.testing.import_graph --write docs/architecture.md"
    )


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "cachefs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


def test_the_check_finds_a_planted_circle_and_upward_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            # chunks is a foundation: importing the router goes upward.
            "chunks.py": "def f():\n    from cachefs.router import ChunkRouter\n",
            "router.py": "from cachefs import chunks\n",
            "tiers/__init__.py": "",
            "tiers/disk.py": "from .. import chunks\nfrom ..tiers import ram\n",
            "tiers/ram.py": "from cachefs.tiers.disk import DiskTier\n",
        },
    )
    graph = ig.import_graph(root)
    assert graph["cachefs.router"] == {"cachefs.chunks": 1}
    assert graph["cachefs.tiers.disk"] == {"cachefs.chunks": 1, "cachefs.tiers.ram": 2}
    assert [str(v) for v in ig.violations(graph)] == [
        "cachefs.chunks:2 imports cachefs.router (upward)"
    ]
    assert ig.circles(graph) == [
        ["cachefs.chunks", "cachefs.router"],
        ["cachefs.tiers.disk", "cachefs.tiers.ram"],
    ]


def test_an_unlayered_module_is_reported(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "chunks.py": ""})
    graph = ig.import_graph(root)
    assert ig.violations(graph) == []
    assert ig.layer_of("cachefs.newthing") == 0  # inside the package: top layer
