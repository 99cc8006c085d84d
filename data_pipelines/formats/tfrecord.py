"""TFRecord framing: [u64 length][u32 masked_crc(length)][data][u32 masked_crc(data)], little-endian."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

from data_pipelines.errors import CorruptRecordError, TruncatedFileError
from data_pipelines.formats.crc32c import masked_crc32c


def write_records(path: str | Path, records) -> None:
    with open(path, "wb") as f:
        for data in records:
            header = struct.pack("<Q", len(data))
            f.write(header + struct.pack("<I", masked_crc32c(header)))
            f.write(data + struct.pack("<I", masked_crc32c(data)))


def read_records(path: str | Path, *, check_crc: bool = True) -> Iterator[bytes]:
    """Yield record payloads; raise CorruptRecordError / TruncatedFileError naming file and record."""
    with open(path, "rb") as f:
        n = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TruncatedFileError(f"record {n} header cut at byte {offset}", path=path, episode=n)
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if check_crc and masked_crc32c(header[:8]) != length_crc:
                raise CorruptRecordError(f"record {n} length CRC mismatch at byte {offset}", path=path, episode=n)
            body = f.read(length + 4)
            if len(body) < length + 4:
                raise TruncatedFileError(f"record {n} body cut: expected {length + 4} bytes, got {len(body)}",
                                         path=path, episode=n)
            data = body[:length]
            if check_crc and masked_crc32c(data) != struct.unpack("<I", body[length:])[0]:
                raise CorruptRecordError(f"record {n} data CRC mismatch at byte {offset}", path=path, episode=n)
            yield data
            n += 1
