"""The stored form of a chunk: header, optional codec config, payload.

Disk and shared tiers store chunks in this one format, so a chunk can move
between them unchanged and is verified the same way wherever it is read::

    header (32 bytes): magic, format, codec id, codec config length,
                       CRC32C of config + payload, raw length, stored length
    codec config:      JSON of a numcodecs codec (only when compressed)
    payload:           raw or compressed chunk bytes
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import crc32c

__all__ = ["CHUNK_HEADER", "ChunkRecord", "RecordCodec"]

#: magic, format version, codec id, codec config length, crc32c (of config and
#: stored payload), payload length, stored payload length
CHUNK_HEADER = struct.Struct("<4sBBHIQQ4x")
_MAGIC = b"CFSC"
_FORMAT = 1
_CODEC_NONE = 0
_CODEC_NUMCODECS = 1  # a numcodecs codec; its JSON config follows the header
# Store compressed only when it saves at least this fraction.
_MIN_SAVING = 0.05


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


@dataclass(slots=True)
class RecordCodec:
    """Encodes chunks into records and verifies and decodes them back.

    Parameters
    ----------
    codec
        The numcodecs codec to compress new records with, or ``None``.
    """

    codec: Any = None
    _config: bytes = b""
    _decoders: dict[bytes, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.codec is not None:
            self._config = json.dumps(self.codec.get_config(), sort_keys=True).encode()

    def encode(self, data: memoryview) -> tuple[bytes, memoryview]:
        """Return ``(header + config, payload)`` for the chunk ``data``."""
        payload, config, codec_id = data, b"", _CODEC_NONE
        if self.codec is not None:
            encoded = memoryview(self.codec.encode(data)).cast("B")
            if encoded.nbytes <= data.nbytes * (1 - _MIN_SAVING):
                payload, config, codec_id = encoded, self._config, _CODEC_NUMCODECS
        header = CHUNK_HEADER.pack(
            _MAGIC,
            _FORMAT,
            codec_id,
            len(config),
            crc32c.crc32c(payload, crc32c.crc32c(config)),
            data.nbytes,
            payload.nbytes,
        )
        return header + config, payload

    @staticmethod
    def parse(buffer: memoryview, expected: int) -> ChunkRecord | None:
        """Verify a record of a chunk of ``expected`` bytes; ``None`` if damaged."""
        if buffer.nbytes < CHUNK_HEADER.size:
            return None
        magic, fmt, codec, conf_len, crc, length, stored = CHUNK_HEADER.unpack_from(
            buffer
        )
        body = buffer[CHUNK_HEADER.size :]
        config, payload = body[:conf_len], body[conf_len:]
        if (
            magic != _MAGIC
            or fmt != _FORMAT
            or codec not in (_CODEC_NONE, _CODEC_NUMCODECS)
            or (codec == _CODEC_NUMCODECS) != (conf_len > 0)
            or stored != payload.nbytes
            or length != expected
            or crc32c.crc32c(payload, crc32c.crc32c(config)) != crc
        ):
            return None
        return ChunkRecord(payload, bytes(config))

    def decode(self, record: ChunkRecord, expected: int) -> memoryview | None:
        """Return the chunk bytes of a compressed record; ``None`` if damaged."""
        decoder = self._decoders.get(record.config)
        try:
            if decoder is None:
                import numcodecs

                decoder = numcodecs.get_codec(json.loads(record.config))
                self._decoders[record.config] = decoder
            out = memoryview(decoder.decode(record.payload)).cast("B")
        except Exception:
            return None
        return out.toreadonly() if out.nbytes == expected else None
