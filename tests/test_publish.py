"""The results page says which mode each figure comes from and who wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.causes import cause_of
from bench.publish import _color, publish
from bench.report import Row


def _doc(scenario: str, quick: bool, rows: list[Row]) -> dict[str, object]:
    return {
        "scenario": scenario,
        "quick": quick,
        "rows": [r.as_dict() for r in rows],
        "machine": {},
    }


def test_page_names_modes_and_winners(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    rows = [
        Row("cold", "s3fs (plain)", 50.0, "MB/s"),
        Row("cold", "simplecache::s3", 110.0, "MB/s"),
        Row("cold", "cachefs readahead", 100.0, "MB/s", target=">= 1x", met=False,
            ratio=0.91, reference="simplecache::s3"),
        Row("rand", "blockcache", 4.0, "us/read"),
        Row("rand", "cachefs disk", 2.0, "us/read"),
        Row("rand", "local file", 1.0, "us/read"),
    ]  # fmt: skip
    (results / "s3_cold.json").write_text(json.dumps(_doc("s3_cold", True, rows)))
    page = publish(results, tmp_path / "out").read_text()
    assert "| s3_cold (quick) | cold | cachefs readahead |" in page  # targets
    # Every unmet target is listed with its cause, or says none is known.
    why = page.split("### Why unmet", 1)[1].split("##", 1)[0]
    assert "- **s3_cold, cold**: cause not established" in why
    winners = page.split("## Who wins where", 1)[1]
    assert "| 0.91x | simplecache::s3 |" in winners
    # Lower is better for times; the local file is a limit, not a peer.
    assert "cachefs disk 2 us/read | blockcache 4 us/read | 2.00x | cachefs |" in (
        winners
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [("cachefs prefetch", "compression=zstd"), ("simplecache", "simplecache::s3")],
)
def test_one_colour_per_system_family(a: str, b: str) -> None:
    assert _color(a) == _color(b)
    assert _color("simplecache") != _color("cachefs") != _color("s3fs (plain)")


def test_recorded_causes_match_their_rows() -> None:
    cause = cause_of("loader_peers", "half: origin ÷ dataset, epoch 2")
    assert "7 of the 8 shards" in cause
    assert cause_of("user_cold_open", "9 unknown row") == "cause not established"


def test_machine_info_names_the_cachefs_that_ran(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The distribution is fsspec-cachefs; a lookup of "cachefs" finds nothing
    # on a fresh install (or a stale dist of the old name): the version must
    # be the imported package's own.
    import cachefs
    from bench.report import machine_info

    monkeypatch.setattr(cachefs, "__version__", "9.9.9+ran")
    assert machine_info()["packages"]["cachefs"] == "9.9.9+ran"


def _scenario(name: str, rows: list[Row]) -> dict[str, object]:
    return {**_doc(name, True, rows), "started_at": "t", "duration_s": 1.0}


def test_throughput_labels_do_not_overlap() -> None:
    # The compression scenario's 18 two-line labels beside short panels: with
    # equal panel heights its labels were drawn over each other (issue 21).
    from bench.publish import _throughput_figure, crowded

    rows = [
        Row(f"{data}: {how}", f"compression={codec}", 1.0 + i, "GB/s")
        for data in ("tokens u16", "tokens u32", "random")
        for how in ("warm read, new process", "repeat read, same process")
        for i, codec in enumerate(("none", "lz4", "zstd"))
    ]
    short = [Row("seq", "cachefs", 2.0, "GB/s"), Row("seq", "s3fs", 1.0, "GB/s")]
    docs = [_scenario(f"s{i}", short) for i in range(4)]
    made = _throughput_figure([*docs, _scenario("compression", rows)])
    assert made is not None
    plt, fig = made
    fig.tight_layout()
    assert crowded(fig) == []
    plt.close(fig)


def test_loader_peers_legends_are_readable() -> None:
    from bench.publish import _loader_peers_figure, crowded

    rows = [
        Row(f"{config}: samples/s, epoch {e}", system, 100.0 * (e + 1), "samples/s",
            detail={"config": config, "epoch": e})
        for config in ("big", "half")
        for system in ("cachefs ShardDataset", "webdataset + cachefs::s3",
                       "LitData StreamingDataset", "MosaicML streaming (MDS)")
        for e in range(3)
    ] + [
        Row(f"half: origin ÷ dataset, epoch {e}", "cachefs ShardDataset", 0.52,
            "x dataset", detail={"config": "half", "epoch": e, "bound": 0.5})
        for e in range(3)
    ]  # fmt: skip
    made = _loader_peers_figure([_scenario("loader_peers", rows)])
    assert made is not None
    plt, fig = made
    fig.tight_layout()
    assert crowded(fig) == []
    assert len(fig.axes) == 2 and all(ax.get_legend() for ax in fig.axes)
    plt.close(fig)


def test_the_dlio_configuration_is_on_the_results_page():
    from bench.publish import _configuration

    doc = {
        "rows": [
            {
                "detail": {
                    "workload": "unet3d_h100",
                    "num_files_train": 28,
                    "epochs": 2,
                    "origin_bytes": {"mount cold": 4358365901, "mount warm": 0},
                }
            }
        ]
    }
    line = _configuration(doc)
    assert "`unet3d_h100`" in line and "num_files_train 28" in line
    assert "mount cold 4,358,365,901" in line and "mount warm 0" in line
    assert _configuration({"rows": [{"detail": {"size": 1}}]}) == ""
