"""The receive path's HTTP/1.1 parsing, as plain functions over bytes (no server)."""

from __future__ import annotations

import pytest

from cachefs.receive.parse import (
    HEAD_LIMIT,
    HTTPProtocolError,
    parse_content_range,
    parse_head,
    request_head,
)

RESPONSE = (
    b"HTTP/1.1 206 Partial Content\r\n"
    b"Content-Range: bytes 10-19/100\r\n"
    b"content-length: 10\r\n"
    b'ETag: "abc"\r\n'
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"\r\n"
    b"0123456789"
)


def test_a_head_split_across_reads_parses_once_complete() -> None:
    end = RESPONSE.index(b"\r\n\r\n") + 4
    for cut in range(end):  # every prefix short of the blank line: not yet
        assert parse_head(RESPONSE[:cut]) is None, cut
    parsed = parse_head(bytearray(RESPONSE))
    assert parsed is not None
    head, used = parsed
    assert used == end and RESPONSE[used:] == b"0123456789"
    assert (head.status, head.reason, head.minor) == (206, "Partial Content", 1)
    assert head.get("CONTENT-RANGE") == "bytes 10-19/100"
    assert head.length == 10 and head.get("etag") == '"abc"'
    assert head.get("set-cookie") == "a=1, b=2"  # repeated fields joined
    assert head.keep_alive and not head.chunked


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/2 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"ICY 200 OK",
        b"HTTP/1.1200 OK",
        b"<html>",
    ],
)
def test_bad_status_lines_are_refused(line: bytes) -> None:
    with pytest.raises(HTTPProtocolError, match=r"status line|not an HTTP"):
        parse_head(line + b"\r\nContent-Length: 0\r\n\r\n")


def test_garbage_is_refused_before_a_head_ends() -> None:
    with pytest.raises(HTTPProtocolError, match="not an HTTP/1 response"):
        parse_head(b"SSH-2.0-OpenSSH")


@pytest.mark.parametrize(
    "field",
    [b"No colon here", b" folded: value", b"bad name: x", b"na\x00me: x"],
)
def test_bad_header_fields_are_refused(field: bytes) -> None:
    with pytest.raises(HTTPProtocolError, match="header field"):
        parse_head(b"HTTP/1.1 200 OK\r\n" + field + b"\r\n\r\n")


def test_a_head_that_never_ends_is_refused_past_the_limit() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * HEAD_LIMIT
    with pytest.raises(HTTPProtocolError, match="longer than"):
        parse_head(head)


@pytest.mark.parametrize("value", [b"-1", b"12a", b"1, 2", b""])
def test_bad_content_lengths_are_refused(value: bytes) -> None:
    parsed = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n")
    assert parsed is not None
    with pytest.raises(HTTPProtocolError, match="Content-Length"):
        _ = parsed[0].length


def test_repeated_equal_content_lengths_are_one() -> None:
    parsed = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n")
    assert parsed is not None and parsed[0].length == 5


def test_chunked_and_connection_fields() -> None:
    def head(fields: bytes, version: bytes = b"1.1") -> object:
        parsed = parse_head(b"HTTP/" + version + b" 200 OK\r\n" + fields + b"\r\n")
        assert parsed is not None
        return parsed[0]

    chunked = head(b"Transfer-Encoding: chunked\r\n")
    assert chunked.chunked and chunked.length is None  # type: ignore[attr-defined]
    assert not head(b"Connection: close\r\n").keep_alive  # type: ignore[attr-defined]
    assert not head(b"", b"1.0").keep_alive  # type: ignore[attr-defined]
    assert head(b"Connection: Keep-Alive\r\n", b"1.0").keep_alive  # type: ignore[attr-defined]


def test_request_heads_are_written_and_injection_refused() -> None:
    fields = [("Host", "h:8080"), ("Range", "bytes=0-9")]
    data = request_head("GET", "/a%20b?x=1", fields)
    assert data == (
        b"GET /a%20b?x=1 HTTP/1.1\r\nHost: h:8080\r\nRange: bytes=0-9\r\n\r\n"
    )
    with pytest.raises(ValueError, match="'X-A'"):
        request_head("GET", "/", [("X-A", "1\r\nEvil: yes")])
    with pytest.raises(ValueError, match="header name"):
        request_head("GET", "/", [("X A", "1")])
    with pytest.raises(ValueError, match="request target"):
        request_head("GET", "/a b", [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 0-9/100", (0, 9, 100)),
        (" bytes 5-5/*", (5, 5, None)),
        ("bytes */100", None),
        ("bytes 9-0/100", None),
        ("items 0-9/100", None),
        ("bytes 0-/100", None),
        ("", None),
        ("bytes 0-9/100x", None),
    ],
)
def test_content_ranges(value: str, expected: object) -> None:
    assert parse_content_range(value) == expected
