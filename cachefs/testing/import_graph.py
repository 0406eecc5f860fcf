"""The import graph of the cachefs package, checked against its layers.

cachefs is built in layers; a module may import modules of its own layer or
of layers below it, never one above, and no set of modules may import each
other in a circle. Imports inside functions count: a lazy import that breaks
a circle at import time still ties the two modules together.

Run ``python -m cachefs.testing.import_graph`` to print the graph, ``--check``
to exit non-zero on a violation, and ``--write docs/architecture.md`` to
regenerate the graph section of that page (between the two marker comments).
``tests/test_import_graph.py`` runs the check and compares the page.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAYERS",
    "Violation",
    "circles",
    "import_graph",
    "layer_of",
    "main",
    "render",
    "violations",
]

PACKAGE = "cachefs"

#: Layers from top to bottom. A name matches a module equal to it or inside
#: it (``cachefs.cli`` covers ``cachefs.cli.warm``). The first match counts,
#: so more specific names come first.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "entry points and integrations",
        (
            "cachefs",
            "cachefs.__main__",
            "cachefs.cli",
            "cachefs.testing",
            "cachefs.process_wide",
            "cachefs.upath",
            "cachefs.wds",
        ),
    ),
    ("POSIX mount", ("cachefs.mount",)),
    ("data loaders", ("cachefs.data",)),
    ("filesystem", ("cachefs.filesystem", "cachefs.namespace", "cachefs.writes")),
    (
        "file objects, prefetch, ranges",
        ("cachefs.file", "cachefs.prefetch", "cachefs.ranges"),
    ),
    ("versions and assembly", ("cachefs.versions", "cachefs.assembly")),
    ("router", ("cachefs.router",)),
    (
        "tiers, fetch and metadata",
        (
            "cachefs.tiers",
            "cachefs.fetch",
            "cachefs.receive",
            "cachefs.metadata",
            "cachefs.listings",
            "cachefs.buffers",
        ),
    ),
    (
        "foundations",
        (
            "cachefs.chunks",
            "cachefs.config",
            "cachefs.bridge",
            "cachefs.errors",
            "cachefs.policy",
            "cachefs._version",
        ),
    ),
)

BEGIN = "<!-- import-graph:begin (python -m cachefs.testing.import_graph --write) -->"
END = "<!-- import-graph:end -->"


@dataclass(frozen=True, slots=True)
class Violation:
    """One import that breaks the layering.

    Attributes
    ----------
    importer, imported
        Dotted module names.
    line
        Line of the import statement in ``importer``.
    why
        ``"upward"`` or ``"unlayered"``.
    """

    importer: str
    imported: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported} ({self.why})"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        if "__pycache__" not in path.parts:
            found[_module_name(path, root)] = path
    return found


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """Return the longest known module that ``name`` is or lies inside."""
    best = None
    for module in known:
        if (name == module or name.startswith(module + ".")) and (
            best is None or len(module) > len(best)
        ):
            best = module
    return best


def _imports(module: str, path: Path, known: set[str]) -> dict[str, int]:
    """Map each cachefs module imported by ``module`` to its first line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from cachefs.tiers import disk`` names the submodule; an
            # attribute (``from cachefs.chunks import ChunkKey``) resolves to
            # the module that holds it.
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name, known)
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def import_graph(root: Path | None = None) -> dict[str, dict[str, int]]:
    """Return ``{module: {imported module: line}}`` for the package.

    Parameters
    ----------
    root
        The directory holding the ``cachefs`` package (default: the one this
        module was imported from).
    """
    root = root or Path(__file__).resolve().parents[2]
    modules = _modules(root)
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    """Return the index of ``module``'s layer (0 is the top), or ``None``."""
    best: tuple[int, int] | None = None
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            inside = module == name or module.startswith(name + ".")
            if inside and (best is None or len(name) > best[1]):
                best = (index, len(name))
    return None if best is None else best[0]


def violations(graph: dict[str, dict[str, int]]) -> list[Violation]:
    """Return every upward import and every module outside the layers."""
    found = []
    for importer, imported in sorted(graph.items()):
        mine = layer_of(importer)
        if mine is None:
            found.append(Violation(importer, importer, 0, "unlayered"))
            continue
        for target, line in sorted(imported.items()):
            theirs = layer_of(target)
            # The package's own __init__ only re-exports; importing it from
            # below would run the whole package first, so it counts as top.
            if theirs is not None and theirs < mine:
                found.append(Violation(importer, target, line, "upward"))
    return found


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Return the import circles: strongly connected sets of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        # Iterative Tarjan: the graph is small, but recursion limits are
        # not a thing a check should depend on.
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, {})))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def _short(module: str) -> str:
    return module.removeprefix(PACKAGE + ".") if module != PACKAGE else PACKAGE


def render(graph: dict[str, dict[str, int]]) -> str:
    """Return the graph as a Markdown table, one row per module, by layer."""
    lines = [
        "| layer | module | imports (cachefs modules) |",
        "| --- | --- | --- |",
    ]
    for index, (title, _) in enumerate(LAYERS):
        members = sorted(m for m in graph if layer_of(m) == index)
        for module in members:
            targets = sorted(graph[module], key=lambda t: (layer_of(t) or 0, t))
            shown = ", ".join(f"`{_short(t)}`" for t in targets) or "—"
            lines.append(f"| {index}. {title} | `{_short(module)}` | {shown} |")
    return "\n".join(lines)


def _rewrite(page: Path, table: str) -> bool:
    text = page.read_text(encoding="utf-8")
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{page}: markers {BEGIN!r} and {END!r} not found")
    new = f"{head}{BEGIN}\n\n{table}\n\n{END}{tail}"
    if new != text:
        page.write_text(new, encoding="utf-8")
    return new != text


def section(page: Path) -> str:
    """Return the generated table currently on ``page``, between the markers."""
    text = page.read_text(encoding="utf-8")
    return text.partition(BEGIN)[2].partition(END)[0].strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Print, check or write the import graph; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m cachefs.testing.import_graph")
    parser.add_argument("--check", action="store_true", help="exit 1 on a violation")
    parser.add_argument("--write", type=Path, metavar="PAGE", help="rewrite PAGE")
    args = parser.parse_args(argv)
    graph = import_graph()
    table = render(graph)
    problems = [str(v) for v in violations(graph)]
    problems += ["circle: " + " -> ".join(group) for group in circles(graph)]
    if args.write:
        changed = _rewrite(args.write, table)
        print(f"{args.write}: {'rewritten' if changed else 'up to date'}")
    else:
        print(table)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if args.check and problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
