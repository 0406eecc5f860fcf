"""CacheConfig: the keywords of CacheFileSystem as one frozen, checked value."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from cachefs import CacheFileSystem
from cachefs.config import CacheConfig


def test_defaults_and_keywords_match_the_filesystem() -> None:
    fs_params = inspect.signature(CacheFileSystem.__init__).parameters
    config_params = inspect.signature(CacheConfig.from_kwargs).parameters
    for name in CacheConfig.KEYWORDS:
        assert config_params[name].default == fs_params[name].default, name
    settings = {
        n
        for n, p in fs_params.items()
        if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
    } - {"self", "target_protocol", "target_options", "fs"}
    assert settings == CacheConfig.KEYWORDS


def test_parses_once_and_is_frozen() -> None:
    config = CacheConfig.from_kwargs(
        ram_limit="2GiB", metadata_ttl="none", retries="3", trust_cache_dir="yes"
    )
    assert config.ram_limit == 2 * 2**30
    assert config.metadata_ttl is None
    assert config.fetch.retries == 3
    assert config.trust_cache_dir is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.ram_limit = 1  # type: ignore[misc]


def test_staging_slice_is_none_when_prefetch_is_off() -> None:
    assert CacheConfig.from_kwargs(prefetch_limit=0).staging is None
    staging = CacheConfig.from_kwargs(prefetch_limit="8MiB", prefetch_hold="2").staging
    assert staging is not None and (staging.limit, staging.hold) == (8 * 2**20, 2.0)


def test_labels_name_the_option_in_messages() -> None:
    with pytest.raises(ValueError, match="--ram-limit"):
        CacheConfig.from_kwargs(ram_limit="lots", labels={"ram_limit": "--ram-limit"})
    with pytest.raises(TypeError):
        CacheConfig.from_kwargs(no_such_setting=1)  # type: ignore[call-arg]
