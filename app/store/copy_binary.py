"""Rows of PostgreSQL's binary COPY stream (`COPY ... TO STDOUT (FORMAT binary)`).

A restore reads its chunks as one COPY instead of hundreds of SELECTs: no round trip per batch
and no Record object per row, which is most of what asyncpg spends on a chunk. The stream
arrives in blocks that cut rows anywhere; `CopyRows.feed` returns the rows a block completes
and keeps the rest for the next one. Only what sessionkeeper asks for is read: rows of a fixed
number of fields, NULL only where the caller allows it (a NULL elsewhere, another field
count or a damaged header ends it with CopyFormatError).
"""

from __future__ import annotations

import struct

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = struct.Struct(">11sII")  # signature, flags, length of the header extension
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
_TRAILER = -1

Row = tuple[memoryview | None, ...]


class CopyFormatError(ValueError):
    """The stream is not the binary COPY of the expected rows."""


class CopyRows:
    """Incremental parser of a binary COPY stream whose rows have `fields` fields, NULL only
    from field `nullable_from` on (None in the row)."""

    def __init__(self, fields: int, nullable_from: int | None = None) -> None:
        self.fields = fields
        self.nullable_from = fields if nullable_from is None else nullable_from
        self._rest = b""
        self._header_read = False
        self.ended = False

    def feed(self, block: bytes) -> list[Row]:
        """The rows `block` completes, as memoryviews into the data (valid while the caller
        holds the returned rows)."""
        data = self._rest + block if self._rest else block
        view = memoryview(data)
        pos = 0 if self._header_read else self._read_header(view)
        if pos < 0:  # the header is not complete yet
            self._rest = data
            return []
        rows: list[Row] = []
        end = len(data)
        fields = self.fields
        unpack16, unpack32 = _INT16.unpack_from, _INT32.unpack_from
        while pos + 2 <= end and not self.ended:
            (count,) = unpack16(data, pos)
            if count == _TRAILER:
                self.ended = True
                pos += 2
                break
            if count != fields:
                raise CopyFormatError(f"a row of {count} fields, {fields} expected")
            start, at, row = pos, pos + 2, list[memoryview | None]()
            for field in range(fields):
                if at + 4 > end:
                    break
                (size,) = unpack32(data, at)
                at += 4
                if size < 0:
                    if field < self.nullable_from:
                        raise CopyFormatError("a NULL field")
                    row.append(None)
                    continue
                if at + size > end:
                    break
                row.append(view[at : at + size])
                at += size
            if len(row) < fields:
                pos = start
                break
            rows.append(tuple(row))
            pos = at
        if self.ended and pos != end:
            raise CopyFormatError("data after the end of the stream")
        self._rest = bytes(view[pos:]) if pos < end else b""
        return rows

    def _read_header(self, view: memoryview) -> int:
        if len(view) < _HEADER.size:
            return -1
        signature, _flags, extension = _HEADER.unpack_from(view)
        if signature != SIGNATURE:
            raise CopyFormatError("not a binary COPY stream")
        if len(view) < _HEADER.size + extension:
            return -1
        self._header_read = True
        return _HEADER.size + int(extension)

    def finish(self) -> None:
        """Check that the stream ended where it should (CopyFormatError if cut short)."""
        if not self.ended or self._rest:
            raise CopyFormatError("the stream ended before its trailer")
