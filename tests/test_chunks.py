"""Chunk keys, versions, spans and size parsing."""

from __future__ import annotations

import datetime

import pytest

from cachefs.chunks import ChunkKey, FileVersion, parse_size, version_token


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2gib", 2 * 2**30),
        ("1.5 MiB", 3 * 2**19),
        ("10MB", 10_000_000),
        ("3k", 3000),
        ("1TiB", 2**40),
    ],
)
def test_parse_size(text, value):
    assert parse_size(text, "x") == value


def test_version_token_prefers_etag_then_size_mtime():
    assert version_token({"size": 3, "ETag": '"abc"', "mtime": 1.0}) == 'ETag:"abc"'
    assert version_token({"size": 3, "mtime": 1.5}) == "size:3:mtime:1.5"
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    assert "2026-01-02" in version_token({"size": 3, "LastModified": when})
    assert version_token({"size": 3}) == "size:3"


def test_keys_name_the_version_and_are_digests():
    v1 = FileVersion("http", "http://h/a", 10, "ETag:1")
    v2 = FileVersion("http", "http://h/a", 10, "ETag:2")
    k1, k2 = v1.key(4, 2), v2.key(4, 2)
    assert k1 != k2 and k1.digest != k2.digest  # a new version has new keys
    assert k1 == ChunkKey(v1, 4, 2) and hash(k1) == hash(ChunkKey(v1, 4, 2))
    assert len(k1.digest) == 40 and "/" not in k1.digest and "h" not in k1.digest[:0]
    assert (k1.start, k1.stop, k1.length) == (8, 10, 2)  # the short last chunk
    assert v1.chunk_count(4) == 3
    assert v1.key(8, 0).digest != v1.key(4, 0).digest  # chunk size is in the key
