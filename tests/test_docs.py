"""The documentation site builds with ``mkdocs build --strict`` and reads well.

Strict mode fails on broken links, missing pages and API references that no
longer resolve, so the docs cannot silently drift from the code. Where
Debian's Chromium is installed, the built pages are also laid out in a
headless browser at 1280 px: no code block may be cut at the page edge,
every image must load, and no table may be clipped: each table's scroll box
(the theme wraps tables in one) must be no wider inside than it shows, and
each table's last column (the results' met/UNMET) must end inside the text
column (screenshots are left in the test's tmp directory).
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._tools import need_tool

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
<script>
window.addEventListener("load", () => {
  const cut = [...document.querySelectorAll("pre > code")]
    .filter((c) => c.scrollWidth > c.clientWidth + 1).length;
  const broken = [...document.querySelectorAll("img")]
    .filter((i) => !i.complete || i.naturalWidth === 0).length;
  const images = document.querySelectorAll("img").length;
  // The theme's script wraps each table in a horizontally scrolling box;
  // a table too wide for the text column scrolls there (the last columns
  // are clipped from view). Measured once that script has run.
  setTimeout(() => {
    const edge = document.querySelector(".md-content__inner")
      .getBoundingClientRect().right;
    const tables = [...document.querySelectorAll(".md-typeset table")];
    const clipped = tables.map((t) => {
      const box = t.closest(".md-typeset__scrollwrap") || t;
      const last = [...t.querySelectorAll("tr > :last-child")]
        .map((c) => c.getBoundingClientRect().right);
      return {
        head: t.rows[0].innerText.replace(/\\s+/g, " ").slice(0, 60),
        hidden: box.scrollWidth - box.clientWidth,
        beyond: Math.max(...last) - edge,
      };
    }).filter((t) => t.hidden > 1 || t.beyond > 1);
    document.body.setAttribute("data-probe", JSON.stringify(
      {cut, broken, images, tables: tables.length, clipped}));
  }, 200);
});
</script>
"""

# The widest table the bench writes: format_table's seven columns filled with
# the longest labels real scenarios use (loader_peers' half-cache rows).
# Placed on the results page whatever its current content, so the check
# does not depend on which scenarios were last published.
_WIDE_ROW = {
    "row": "half: origin ÷ dataset, epoch 0",
    "system": "webdataset + cachefs::s3 (cache = half)",
    "value": 12345.678,
    "unit": "x dataset",
    "reference": "bound (1 - cache/dataset)",
    "ratio": 0.5,
    "target": ">= 0.909x",
    "met": False,
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_mkdocs_build_strict(site: Path) -> None:
    assert (site / "index.html").exists()
    assert (site / "api" / "index.html").exists()


def _widest_table() -> str:
    import markdown

    from bench.report import Row, format_table

    text = format_table([Row(**_WIDE_ROW)]).split("\n\n")[0]
    return str(markdown.markdown(text, extensions=["tables"]))


@pytest.mark.parametrize("page", ["index.html", "bench/results/index.html"])
def test_pages_lay_out_at_1280_px(site: Path, page: str) -> None:
    chromium = need_tool("chromium", "chromium-browser", package="chromium")
    source = site / page
    probe = source.with_name("probe.html")
    text = source.read_text()
    if page.startswith("bench/results"):
        assert text.count("</article>") == 1
        text = text.replace("</article>", _widest_table() + "</article>")
    probe.write_text(text.replace("</body>", _PROBE + "</body>"))
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        "--virtual-time-budget=5000",
    ]
    shot = source.with_name(source.stem + "-1280.png")
    subprocess.run(
        [*flags, f"--screenshot={shot}", probe.as_uri()],
        capture_output=True,
        timeout=120,
        check=False,
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    match = re.search(r'data-probe="([^"]*)"', dom)
    assert match, "the page did not finish loading in Chromium"
    found = json.loads(html.unescape(match.group(1)))
    assert found["cut"] == 0, f"{found['cut']} code blocks cut at 1280 px on {page}"
    assert found["broken"] == 0, f"{found['broken']} images did not load on {page}"
    assert found["tables"] > 0 or page == "index.html"
    assert found["clipped"] == [], f"tables clipped at 1280 px on {page}"
    assert shot.exists() and shot.stat().st_size > 10_000


def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests._tools import need_tool as need

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need("chromium", package="chromium")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="'chromium'"):
        need("chromium", package="chromium")
