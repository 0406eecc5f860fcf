"""The stored form of a chunk: header, optional codec config, payload.

Disk and shared tiers store chunks in this one format, so a chunk can move
between them unchanged and is verified the same way wherever it is read::

    header (32 bytes): magic, format, codec id, codec config length,
                       CRC32C, raw length, stored length
    codec config:      JSON of a numcodecs codec (only when compressed)
    payload:           raw or compressed chunk bytes

The CRC32C covers the chunk's key digest, the header (its own field zeroed),
the codec config and the payload: a record is valid only under the key it
was written for, so a record copied or swapped to another chunk's name is
damage, not a hit. Only the codecs in :data:`ALLOWED_CODECS`
are ever built from a record; any other codec id is damage too.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c

__all__ = [
    "ALLOWED_CODECS",
    "CHUNK_HEADER",
    "ChunkRecord",
    "RecordCodec",
    "codec_config",
]

#: magic, format version, codec id, codec config length, crc32c (of the key
#: digest, the header with this field zeroed, the config and the stored
#: payload), payload length, stored payload length
CHUNK_HEADER = struct.Struct("<4sBBHIQQ4x")
_MAGIC = b"CFSC"
_FORMAT = 2  # 1: no key binding, no header CRC (read as damage, refetched)
_CODEC_NONE = 0
_CODEC_NUMCODECS = 1  # a numcodecs codec; its JSON config follows the header
# Store compressed only when it saves at least this fraction.
_MIN_SAVING = 0.05
_DIGEST_BYTES = 20
#: numcodecs codec ids a record may name: byte compressors only. Anything
#: that builds objects (pickle, msgpack, json, vlen-*, categorize...) is never
#: built from a file, whatever numcodecs' own switches say.
ALLOWED_CODECS = frozenset({"zstd", "lz4", "blosc", "zlib", "gzip", "bz2", "lzma"})
_MAX_CONFIG = 4096


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A parsed, verified record.

    Attributes
    ----------
    payload
        The stored payload (a view into the record's buffer).
    config
        The codec config bytes, empty for a raw payload.
    """

    payload: memoryview
    config: bytes

    @property
    def compressed(self) -> bool:
        """Whether the payload must be decoded."""
        return bool(self.config)


def _digest_bytes(digest: str) -> bytes:
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != _DIGEST_BYTES:
        raise ValueError(f"not a chunk key digest: {digest!r}")
    return raw


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is JSON data of scalars, lists and string-keyed dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if depth > 3:
        return False
    if isinstance(value, list):
        return all(_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str) and _plain_json(v, depth + 1) for k, v in value.items()
        )
    return False


def codec_config(raw: bytes | memoryview) -> dict[str, Any] | None:
    """Return the codec config a record names, or ``None`` if it is refused.

    A config is accepted only as a JSON object of plain values whose ``id``
    is in :data:`ALLOWED_CODECS`.
    """
    if len(raw) > _MAX_CONFIG:
        return None
    try:
        config = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        return None
    if (
        not isinstance(config, dict)
        or config.get("id") not in ALLOWED_CODECS
        or not _plain_json(config)
    ):
        return None
    return config


@dataclass(slots=True)
class RecordCodec:
    """Encodes chunks into records and verifies and decodes them back.

    Parameters
    ----------
    codec
        The numcodecs codec to compress new records with, or ``None``; its id
        must be in :data:`ALLOWED_CODECS`.

    Raises
    ------
    ValueError
        If ``codec`` is not one a record may name.
    """

    codec: Any = None
    _config: bytes = b""
    _decoders: dict[bytes, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.codec is not None:
            config = self.codec.get_config()
            self._config = json.dumps(config, sort_keys=True).encode()
            if codec_config(self._config) is None:
                raise ValueError(
                    f"compression codec {config.get('id')!r} cannot be stored: "
                    f"use one of {', '.join(sorted(ALLOWED_CODECS))}"
                )

    def encode(self, data: memoryview, digest: str) -> tuple[bytes, memoryview]:
        """Return ``(header + config, payload)`` for chunk ``digest``'s ``data``."""
        payload, config, codec_id = data, b"", _CODEC_NONE
        if self.codec is not None:
            encoded = memoryview(self.codec.encode(data)).cast("B")
            if encoded.nbytes <= data.nbytes * (1 - _MIN_SAVING):
                payload, config, codec_id = encoded, self._config, _CODEC_NUMCODECS
        fields = (
            _MAGIC,
            _FORMAT,
            codec_id,
            len(config),
            0,
            data.nbytes,
            payload.nbytes,
        )
        crc = _crc(digest, CHUNK_HEADER.pack(*fields), config, payload)
        header = CHUNK_HEADER.pack(*fields[:4], crc, *fields[5:])
        return header + config, payload

    @staticmethod
    def check(
        buffer: memoryview, expected: int | None, digest: str
    ) -> tuple[ChunkRecord | None, str]:
        """Verify a record stored under ``digest``; return it, or why not.

        ``expected`` is the chunk's length, or ``None`` when unknown (the
        header's length is then taken). The reason is empty for a valid
        record.
        """
        if buffer.nbytes < CHUNK_HEADER.size:
            return (
                None,
                f"is truncated ({buffer.nbytes} bytes, shorter than its header)",
            )
        fields = CHUNK_HEADER.unpack_from(buffer)
        magic, fmt, codec, conf_len, crc, length, stored = fields
        if magic != _MAGIC:
            return None, "is not a chunk record (bad magic)"
        if fmt != _FORMAT:
            return None, f"has an unknown record format ({fmt})"
        if codec not in (_CODEC_NONE, _CODEC_NUMCODECS) or (
            (codec == _CODEC_NUMCODECS) != (conf_len > 0)
        ):
            return None, "names an unknown codec kind"
        body = buffer[CHUNK_HEADER.size :]
        config, payload = body[:conf_len], body[conf_len:]
        if stored != payload.nbytes:
            return None, f"holds {payload.nbytes} payload bytes, its header {stored}"
        if expected is not None and length != expected:
            return None, f"holds {length} bytes, the chunk has {expected}"
        zeroed = CHUNK_HEADER.pack(*fields[:4], 0, *fields[5:])
        if _crc(digest, zeroed, config, payload) != crc:
            return None, "failed its CRC32C check (damaged, or another chunk's record)"
        if conf_len and codec_config(config) is None:
            return None, "names a codec cachefs does not decode"
        return ChunkRecord(payload, bytes(config)), ""

    @staticmethod
    def parse(buffer: memoryview, expected: int, digest: str) -> ChunkRecord | None:
        """Verify a record of chunk ``digest``; ``None`` if damaged."""
        return RecordCodec.check(buffer, expected, digest)[0]

    def decode(self, record: ChunkRecord, expected: int) -> memoryview | None:
        """Return the chunk bytes of a compressed record; ``None`` if damaged."""
        decoder = self._decoders.get(record.config)
        try:
            if decoder is None:
                config = codec_config(record.config)
                if config is None:  # parse() refuses these; never build one
                    return None
                import numcodecs

                decoder = numcodecs.get_codec(config)
                self._decoders[record.config] = decoder
            out = memoryview(decoder.decode(record.payload)).cast("B")
        except Exception:
            return None
        return out.toreadonly() if out.nbytes == expected else None


def _crc(
    digest: str, header: bytes, config: bytes | memoryview, payload: memoryview
) -> int:
    crc = crc32c.crc32c(header, crc32c.crc32c(_digest_bytes(digest)))
    return int(crc32c.crc32c(payload, crc32c.crc32c(config, crc)))
