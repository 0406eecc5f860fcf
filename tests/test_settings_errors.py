"""Settings a user gets wrong fail at once, naming the setting (issue 19, 7-10).

A mistyped keyword is refused wherever it comes from (keywords, chained URL
options, ``FSSPEC_CACHEFS_*``, fsspec's JSON config, the ``cachefs``
command), naming the closest known keyword; a ``cache_dir`` that cannot be
one says why; one directory listed twice is refused; ``$VARIABLES`` in
``cache_dir`` are expanded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import fsspec.config
import pytest

from cachefs import CacheFileSystem
from cachefs.testing import HTTPOrigin
from tests.test_cli import one_error_line, run

MISTYPED = [
    ("cache_dri", "cache_dir"),
    ("disk_limt", "disk_limit"),
    ("ram_limt", "ram_limit"),
    ("chunksize", "chunk_size"),
    ("metadata_tll", "metadata_ttl"),
    ("max_request", "max_requests"),
    ("target_option", "target_options"),
    ("trust_cachedir", "trust_cache_dir"),
]


@pytest.fixture
def fsspec_conf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty fsspec config (its directory returned), restored afterwards."""
    conf_dir = tmp_path / "fsspec-config"
    conf_dir.mkdir()
    for key in list(os.environ):
        if key.startswith("FSSPEC_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(fsspec.config, "conf_dir", str(conf_dir))
    monkeypatch.setattr(fsspec.config, "conf", {})
    yield conf_dir


def _reload_conf() -> None:
    """Read the config files and environment as fsspec does at import."""
    fsspec.config.set_conf_files(fsspec.config.conf_dir, fsspec.config.conf)
    fsspec.config.set_conf_env(fsspec.config.conf)


def _build(tmp_path: Path, **kwargs: Any) -> CacheFileSystem:
    options: dict[str, Any] = {
        "target_protocol": "file",
        "cache_dir": str(tmp_path / "cache"),
        "skip_instance_cache": True,
    }
    options.update(kwargs)
    fs = fsspec.filesystem("cachefs", **options)
    assert isinstance(fs, CacheFileSystem)
    return fs


# -- 7: mistyped keywords --------------------------------------------------------


@pytest.mark.parametrize(("typo", "meant"), MISTYPED)
def test_a_mistyped_keyword_names_itself_and_the_closest(
    tmp_path: Path, fsspec_conf: Path, typo: str, meant: str
) -> None:
    with pytest.raises(TypeError) as info:
        _build(tmp_path, **{typo: "1"})
    message = str(info.value)
    assert repr(typo) in message and repr(meant) in message


def test_a_mistyped_keyword_in_chained_url_options(
    tmp_path: Path, fsspec_conf: Path
) -> None:
    with HTTPOrigin(files={"x.bin": b"x" * 100}) as origin:
        with pytest.raises(TypeError, match=r"'disk_limt'.*'disk_limit'"):
            fsspec.open(
                f"cachefs::{origin.url_for('x.bin')}",
                cachefs={"cache_dir": str(tmp_path / "cache"), "disk_limt": "12MiB"},
            )
        # Nothing was built on the default directory meanwhile.
        assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("typo", "meant"), MISTYPED[:3])
def test_a_mistyped_env_variable_names_the_variable(
    tmp_path: Path,
    fsspec_conf: Path,
    monkeypatch: pytest.MonkeyPatch,
    typo: str,
    meant: str,
) -> None:
    variable = f"FSSPEC_CACHEFS_{typo.upper()}"
    monkeypatch.setenv(variable, "12MiB")
    _reload_conf()
    with pytest.raises(TypeError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert repr(typo) in message and repr(meant) in message
    assert variable in message


def test_a_mistyped_key_in_the_json_config_file(
    tmp_path: Path, fsspec_conf: Path
) -> None:
    (fsspec_conf / "conf.json").write_text(
        json.dumps({"cachefs": {"disk_limt": "12MiB"}})
    )
    _reload_conf()
    with pytest.raises(TypeError) as info:
        _build(tmp_path)
    message = str(info.value)
    assert "'disk_limt'" in message and "'disk_limit'" in message
    assert f"fsspec config file in {fsspec_conf}" in message


def test_a_keyword_the_target_names_is_passed_on(
    tmp_path: Path, fsspec_conf: Path
) -> None:
    # Leftover keywords of fsspec.open("cachefs::http://...", client_kwargs=...)
    # land on cachefs: the target's own keywords reach the target.
    headers = {"X-Test": "1"}
    fs = _build(tmp_path, target_protocol="http", client_kwargs={"headers": headers})
    try:
        assert fs.fs.client_kwargs == {"headers": headers}
    finally:
        fs.close()


@pytest.mark.parametrize(
    ("where", "typo", "meant"),
    [("env", "disk_limt", "disk_limit"), ("file", "cache_dri", "cache_dir")],
)
def test_the_cli_refuses_a_mistyped_config_key(
    env: dict[str, str], tmp_path: Path, where: str, typo: str, meant: str
) -> None:
    if where == "env":
        env[f"FSSPEC_CACHEFS_{typo.upper()}"] = "12MiB"
    else:
        conf_dir = Path(env["FSSPEC_CONFIG_DIR"])
        conf_dir.mkdir()
        (conf_dir / "conf.json").write_text(json.dumps({"cachefs": {typo: "x"}}))
    for command in ("config", "stats"):
        proc = run(env, command, "--cache-dir", str(tmp_path / "cache"))
        assert proc.returncode == 2, proc.stderr
        line = one_error_line(proc)
        assert repr(typo) in line and repr(meant) in line, line
        if where == "env":
            assert f"FSSPEC_CACHEFS_{typo.upper()}" in line


# -- 8: a cache_dir that cannot be one ----------------------------------------------


def test_cache_dir_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"")
    with pytest.raises(NotADirectoryError) as info:
        _build(tmp_path, cache_dir=str(blocker / "cache"))
    message = str(info.value)
    assert "cache_dir" in message
    assert f"{str(blocker)!r} is a regular file" in message


def test_cache_dir_that_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"")
    with pytest.raises(NotADirectoryError) as info:
        _build(tmp_path, cache_dir=str(blocker))
    message = str(info.value)
    assert "cache_dir" in message and "regular file" in message
    assert "symlink" not in message


def test_the_cli_names_cache_dir_under_a_file(
    env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"")
    (tmp_path / "data.bin").write_bytes(b"x" * 10)
    proc = run(
        env, "warm", "--cache-dir", str(blocker / "c"), str(tmp_path / "data.bin")
    )
    line = one_error_line(proc)
    assert "cache_dir" in line and "regular file" in line, line


# -- 9: one directory listed twice ---------------------------------------------------


@pytest.mark.parametrize("second", ["{d}", "{d}/", "{d}/../cache", "{d}/."])
def test_one_directory_listed_twice_is_refused(tmp_path: Path, second: str) -> None:
    d = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=r"cache_dir lists the directory .* twice"):
        _build(tmp_path, cache_dir=[d, second.format(d=d)], disk_limit="12MiB")


def test_two_directories_are_normalised_and_keep_the_whole_budget(
    tmp_path: Path,
) -> None:
    dirs = [str(tmp_path / "a"), str(tmp_path / "x" / ".." / "b") + "/"]
    fs = _build(tmp_path, cache_dir=dirs, disk_limit="12MiB")
    try:
        assert sum(d.limit for d in fs.router.disks) == 12 * 2**20
        assert fs.cache_dirs == [tmp_path / "a", tmp_path / "b"]
    finally:
        fs.close()


def test_the_cli_refuses_a_directory_twice(env: dict[str, str], tmp_path: Path) -> None:
    d = str(tmp_path / "cache")
    proc = run(env, "config", "--cache-dir", d, "--cache-dir", d + "/")
    assert proc.returncode == 2
    assert "--cache-dir lists the directory" in one_error_line(proc)


# -- 10: variables in cache_dir ------------------------------------------------------


@pytest.mark.parametrize("spelling", ["$HOME/cachefs", "${HOME}/cachefs"])
def test_variables_in_a_json_config_cache_dir_are_expanded(
    tmp_path: Path,
    fsspec_conf: Path,
    monkeypatch: pytest.MonkeyPatch,
    spelling: str,
) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (fsspec_conf / "conf.json").write_text(
        json.dumps({"cachefs": {"cache_dir": spelling}})
    )
    _reload_conf()
    fs = fsspec.filesystem("cachefs", target_protocol="file", skip_instance_cache=True)
    try:
        assert fs.cache_dirs == [home / "cachefs"]
        assert (home / "cachefs").is_dir()
        assert os.listdir(work) == []
    finally:
        fs.close()


def test_an_unset_variable_in_cache_dir_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CACHEFS_NO_SUCH_VAR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"cache_dir=.*\$CACHEFS_NO_SUCH_VAR"):
        _build(tmp_path, cache_dir="$CACHEFS_NO_SUCH_VAR/cachefs")
    assert os.listdir(tmp_path) == []
