"""AMF0 (Action Message Format 0) encoding and decoding.

Adobe "Action Message Format -- AMF 0" (2007). RTMP commands and metadata are
sequences of AMF0 values. Python mapping:

    number -> float          boolean -> bool         string/long string -> str
    object -> dict           null -> None            undefined -> UNDEFINED
    ECMA array -> ECMAArray  strict array -> list    date -> AMFDate
    typed object -> dict (class name dropped)        XML document -> str

Decoding never raises anything but `AMF0Error`; nesting depth is capped so a
hostile peer cannot recurse us into a RecursionError.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import RemoteProtocolError

NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED = 0x0D
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10

MAX_DEPTH = 32

_DOUBLE = struct.Struct(">d")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_DATE = struct.Struct(">dh")


class AMF0Error(RemoteProtocolError):
    """Malformed or truncated AMF0 data."""


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = _Undefined()


class ECMAArray(dict):
    """An associative array; encodes as AMF0 ECMA array (onMetaData uses it)."""


@dataclass(frozen=True, slots=True)
class AMFDate:
    milliseconds: float  # since the Unix epoch, UTC
    timezone: int = 0  # minutes; the spec says send 0 and ignore on read


# --------------------------------------------------------------------------- decode


def decode_all(data: bytes | memoryview) -> list:
    """Decode every value in `data` (a command message body is a sequence)."""
    dec = _Decoder(bytes(data))
    values = []
    while dec.pos < len(dec.data):
        values.append(dec.value(0))
    return values


def decode(data: bytes | memoryview) -> object:
    """Decode exactly one value."""
    values = decode_all(data)
    if len(values) != 1:
        raise AMF0Error(f"expected one AMF0 value, found {len(values)}")
    return values[0]


class _Decoder:
    __slots__ = ("data", "pos", "refs")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list = []  # complex values in order of appearance, for REFERENCE

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise AMF0Error(f"truncated AMF0 data: need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def utf8(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AMF0Error(f"invalid UTF-8 in AMF0 string at offset {self.pos - n}") from exc

    def value(self, depth: int) -> object:
        if depth > MAX_DEPTH:
            raise AMF0Error(f"AMF0 nesting deeper than {MAX_DEPTH}")
        marker = self.take(1)[0]
        if marker == NUMBER:
            return _DOUBLE.unpack(self.take(8))[0]
        if marker == BOOLEAN:
            return self.take(1)[0] != 0
        if marker == STRING:
            return self.utf8(self.u16())
        if marker == OBJECT:
            obj: dict = {}
            self.refs.append(obj)
            self.properties(obj, depth)
            return obj
        if marker == NULL:
            return None
        if marker in (UNDEFINED_MARKER, UNSUPPORTED):
            return UNDEFINED
        if marker == REFERENCE:
            index = self.u16()
            if index >= len(self.refs):
                raise AMF0Error(f"AMF0 reference {index} to an unknown object")
            return self.refs[index]
        if marker == ECMA_ARRAY:
            self.u32()  # associative-count is a hint only; encoders get it wrong
            arr = ECMAArray()
            self.refs.append(arr)
            self.properties(arr, depth)
            return arr
        if marker == STRICT_ARRAY:
            count = self.u32()
            # Each element takes at least one byte: refuse counts the data cannot hold
            # instead of looping toward a claimed four billion.
            if count > len(self.data) - self.pos:
                raise AMF0Error(f"AMF0 strict array claims {count} elements, data is shorter")
            items: list = []
            self.refs.append(items)
            for _ in range(count):
                items.append(self.value(depth + 1))
            return items
        if marker == DATE:
            ms, tz = _DATE.unpack(self.take(10))
            return AMFDate(ms, tz)
        if marker in (LONG_STRING, XML_DOCUMENT):
            return self.utf8(self.u32())
        if marker == TYPED_OBJECT:
            self.utf8(self.u16())  # class name: nothing in RTMP ingest depends on it
            obj = {}
            self.refs.append(obj)
            self.properties(obj, depth)
            return obj
        raise AMF0Error(f"unsupported AMF0 type marker 0x{marker:02x} at offset {self.pos - 1}")

    def properties(self, target: dict, depth: int) -> None:
        while True:
            key = self.utf8(self.u16())
            if key == "" and self.pos < len(self.data) and self.data[self.pos] == OBJECT_END:
                self.pos += 1
                return
            target[key] = self.value(depth + 1)


# --------------------------------------------------------------------------- encode


def encode(*values: object) -> bytes:
    out = bytearray()
    for value in values:
        _encode_value(out, value, 0)
    return bytes(out)


def _encode_str_body(out: bytearray, s: str) -> None:
    raw = s.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("AMF0 property names are limited to 65535 bytes")
    out += _U16.pack(len(raw))
    out += raw


def _encode_value(out: bytearray, value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"AMF0 nesting deeper than {MAX_DEPTH}")
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):  # before int: bool is an int subclass
        out.append(BOOLEAN)
        out.append(1 if value else 0)
    elif isinstance(value, (int, float)):
        out.append(NUMBER)
        out += _DOUBLE.pack(float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(STRING)
            out += _U16.pack(len(raw))
        else:
            out.append(LONG_STRING)
            out += _U32.pack(len(raw))
        out += raw
    elif isinstance(value, AMFDate):
        out.append(DATE)
        out += _DATE.pack(value.milliseconds, value.timezone)
    elif isinstance(value, dict):
        if isinstance(value, ECMAArray):
            out.append(ECMA_ARRAY)
            out += _U32.pack(len(value))
        else:
            out.append(OBJECT)
        for key, item in value.items():
            _encode_str_body(out, str(key))
            _encode_value(out, item, depth + 1)
        out += b"\x00\x00\x09"
    elif isinstance(value, (list, tuple)):
        out.append(STRICT_ARRAY)
        out += _U32.pack(len(value))
        for item in value:
            _encode_value(out, item, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as AMF0")
