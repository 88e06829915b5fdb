"""Protobuf (proto3) wire primitives for ``_proto``: varints, a writer that references buffers, a field reader.

The writer keeps a message as a list of bytes-like parts: a typed buffer (a NumberArray's bytes) goes in
as a zero-copy memoryview and is copied once, by the final ``b"".join``. The reader splits a message into
(field, wire type, value) with values as memoryview slices of the body (no copy).
"""

from __future__ import annotations

import struct
from typing import Any

from ._exceptions import TinkerError

__all__ = ["ProtoDecodeError"]

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

# Wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}

_EMPTY = memoryview(b"")
_SMALL_VARINTS = [bytes([i]) for i in range(128)]


class ProtoDecodeError(TinkerError, ValueError):
    """A protobuf body is malformed or does not fit the expected message (a TinkerError and a ValueError)."""


def varint(value: int) -> bytes:
    """Encode an unsigned varint (negative values as their 64-bit two's complement)."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if value < 0:
        value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Writer:
    """A message under construction: a list of bytes-like parts and their total size in bytes."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def _add(self, data: Any) -> None:
        self.parts.append(data)
        self.size += len(data)

    def key(self, field: int, wire_type: int) -> None:
        self._add(varint((field << 3) | wire_type))

    def varint(self, field: int, value: int, *, always: bool = False) -> None:
        if value or always:
            self._add(varint((field << 3) | VARINT) + varint(value))

    def boolean(self, field: int, value: bool) -> None:
        if value:
            self._add(varint((field << 3) | VARINT) + b"\x01")

    def double(self, field: int, value: float, *, always: bool = False) -> None:
        if value or always:
            self._add(varint((field << 3) | I64) + struct.pack("<d", value))

    def blob(self, field: int, value: Any, *, always: bool = False) -> None:
        """A length-delimited field; ``value`` is any bytes-like object of format 'B' (kept by reference)."""
        n = len(value)
        if n or always:
            self._add(varint((field << 3) | LEN) + varint(n))
            if n:
                self._add(value)

    def string(self, field: int, value: str, *, always: bool = False) -> None:
        self.blob(field, value.encode("utf-8"), always=always)

    def message(self, field: int, sub: Writer | bytes | bytearray) -> None:
        """An embedded message (always present): another Writer's parts, or encoded bytes."""
        if not isinstance(sub, Writer):
            self.blob(field, sub, always=True)
            return
        self._add(varint((field << 3) | LEN) + varint(sub.size))
        self.parts.extend(sub.parts)
        self.size += sub.size

    def packed_int64(self, field: int, values: list[int]) -> None:
        if values:
            self.blob(field, b"".join(varint(v) for v in values), always=True)

    def map_double(self, field: int, mapping: dict[str, float] | None) -> None:
        for k, v in (mapping or {}).items():
            entry = Writer()
            entry.string(1, k, always=True)
            entry.double(2, float(v), always=True)
            self.message(field, entry)

    def map_message(self, field: int, key: str, value: Writer | bytes) -> None:
        entry = Writer()
        entry.string(1, key, always=True)
        entry.message(2, value)
        self.message(field, entry)

    def getvalue(self) -> bytes:
        """The encoded message: every part copied once into one bytes object."""
        return b"".join(self.parts)


def read_varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    try:
        b = buf[pos]
    except IndexError:
        raise ProtoDecodeError(f"{where}: truncated varint") from None
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    n = len(buf)
    pos += 1
    while True:
        if pos >= n:
            raise ProtoDecodeError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoDecodeError(f"{where}: varint longer than 10 bytes")


def fields(data: bytes | bytearray | memoryview, where: str) -> list[tuple[int, int, Any]]:
    """Split a message into (field number, wire type, value); value is an int or a memoryview slice."""
    buf = data if type(data) is memoryview else memoryview(data)
    out: list[tuple[int, int, Any]] = []
    append = out.append
    pos, n = 0, len(buf)
    value: Any
    while pos < n:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            key, pos = read_varint(buf, pos - 1, where)
        if key < 8:
            raise ProtoDecodeError(f"{where}: invalid field number 0")
        wt = key & 7
        if wt == LEN:
            length = buf[pos] if pos < n else 0x80
            if length < 0x80:
                pos += 1
            elif pos + 1 < n and buf[pos + 1] < 0x80:  # two-byte length (128 B .. 16 KiB), inlined
                length = (length & 0x7F) | (buf[pos + 1] << 7)
                pos += 2
            else:
                length, pos = read_varint(buf, pos, f"{where} field {key >> 3}")
            end = pos + length
            if end > n:
                raise ProtoDecodeError(f"{where} field {key >> 3}: length {length} runs past the end of the message "
                                       f"({n - pos} bytes left)")
            value, pos = buf[pos:end], end
        elif wt == VARINT:
            value = buf[pos] if pos < n else 0x80
            if value < 0x80:
                pos += 1
            else:
                value, pos = read_varint(buf, pos, f"{where} field {key >> 3}")
        elif wt == I64 or wt == I32:
            size = 8 if wt == I64 else 4
            if pos + size > n:
                raise ProtoDecodeError(f"{where} field {key >> 3}: truncated {size * 8}-bit value")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ProtoDecodeError(f"{where} field {key >> 3}: unsupported wire type {wt}")
        append((key >> 3, wt, value))
    return out


def expect(wt: int, want: int, where: str) -> None:
    if wt != want:
        raise ProtoDecodeError(f"{where}: expected a {_WIRE_NAMES[want]} field, got wire type {wt}")


def flat_message(data: memoryview, where: str, spec: dict[int, tuple[str, int]]) -> dict[str, Any]:
    """A message of singular fields: ``spec`` maps field number -> (name, wire type); returns name -> raw value
    (an int or a memoryview; the last occurrence wins, as proto3 merges). Other fields are skipped."""
    out: dict[str, Any] = {}
    for f, wt, v in fields(data, where):
        entry = spec.get(f)
        if entry is not None:
            expect(wt, entry[1], f"{where}.{entry[0]}")
            out[entry[0]] = v
    return out


def int32(v: int) -> int:
    v &= _U32
    return v - (1 << 32) if v & 0x80000000 else v


def int64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v & (1 << 63) else v


def uint32(v: int) -> int:
    return v & _U32


def string(value: memoryview, where: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoDecodeError(f"{where}: not valid UTF-8") from None


def double(value: memoryview) -> float:
    return float(struct.unpack("<d", value)[0])


def repeated_int64(wt: int, value: Any, where: str, out: list[int]) -> None:
    if wt == VARINT:
        out.append(int64(value))
    elif wt == LEN:
        pos = 0
        while pos < len(value):
            v, pos = read_varint(value, pos, where)
            out.append(int64(v))
    else:
        raise ProtoDecodeError(f"{where}: expected packed or varint int64 values, got wire type {wt}")


def map_entry(value: memoryview, where: str) -> tuple[str, int, Any]:
    """A map entry's (key, value wire type, value); wire type -1 when the value is absent."""
    key = ""
    val: tuple[int, Any] = (-1, None)
    for f, wt, v in fields(value, where):
        if f == 1:
            expect(wt, LEN, f"{where}.key")
            key = string(v, f"{where}.key")
        elif f == 2:
            val = (wt, v)
    return key, val[0], val[1]


def message_map_entry(value: memoryview, where: str) -> tuple[str, memoryview]:
    """A ``map<string, Message>`` entry: (key, the message bytes; empty when absent)."""
    key, wt, v = map_entry(value, where)
    if wt == -1:
        return key, _EMPTY
    expect(wt, LEN, f"{where}[{key!r}]")
    return key, v


def double_map_entry(value: memoryview, where: str) -> tuple[str, float]:
    key, wt, v = map_entry(value, where)
    if wt == -1:
        return key, 0.0
    expect(wt, I64, f"{where}[{key!r}]")
    return key, double(v)


def bf16_to_f32_bytes(data: memoryview) -> bytes:
    """bfloat16 is the high half of a float32: interleave two zero bytes per item (C-level slicing)."""
    if len(data) % 2:
        raise ValueError(f"{len(data)} bytes is not a whole number of 2-byte items")
    out = bytearray(2 * len(data))
    out[2::4] = data[0::2]
    out[3::4] = data[1::2]
    return bytes(out)
