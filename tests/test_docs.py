"""The documentation site builds with ``mkdocs build --strict`` and reads well.

Strict mode fails on broken links, missing pages and API references that no
longer resolve, so the docs cannot silently drift from the code. Where
Debian's Chromium is installed, the built pages are also laid out in a
headless browser at 1280 px: no code block may be cut at the page edge and
every image must load (screenshots are left in the test's tmp directory).
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
  document.body.setAttribute(
    "data-probe", JSON.stringify({cut, broken, images}));
});
</script>
"""


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


@pytest.mark.parametrize("page", ["index.html", "bench/results/index.html"])
def test_pages_lay_out_at_1280_px(site: Path, page: str) -> None:
    chromium = need_tool("chromium", "chromium-browser", package="chromium")
    source = site / page
    probe = source.with_name("probe.html")
    probe.write_text(source.read_text().replace("</body>", _PROBE + "</body>"))
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
