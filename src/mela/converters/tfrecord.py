"""Read and write TFRecord files of ``tf.train.Example`` without TensorFlow or protobuf.

Meta-Dataset ships its sources as TFRecords; pulling in TensorFlow just to read
them is a multi-gigabyte dependency, so the record framing, the CRC-32C checksums
and the handful of protobuf messages involved are implemented here.

Record framing: ``uint64 length | uint32 masked_crc(length bytes) | data | uint32 masked_crc(data)``,
little endian, with ``masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``
and ``crc`` the CRC-32C (Castagnoli) of ``x``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from mela.errors import MelaError

_POLY_REFLECTED = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)


def crc32c_bytewise(data: bytes, crc: int = 0) -> int:
    """CRC-32C one byte at a time: the plain textbook loop, kept as the reference for the fast path."""
    crc ^= _U32
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


@lru_cache(maxsize=32)
def _zero_shift_tables(length: int) -> tuple[list[int], ...]:
    """Tables for the linear map "feed ``length`` zero bytes into the register", one per register byte."""
    regs = (np.arange(256, dtype=np.uint32)[None, :] << (np.arange(4, dtype=np.uint32)[:, None] * 8)).reshape(-1)
    for _ in range(length):
        regs = _TABLE_NP[regs & 0xFF] ^ (regs >> 8)
    return tuple(regs.reshape(4, 256)[k].tolist() for k in range(4))


def crc32c_numpy(data: bytes) -> int:
    """CRC-32C of ``data``, vectorised: fast enough in pure Python/numpy for megabyte JPEG records.

    The data is cut into equal chunks whose CRC registers (started at zero) are
    advanced in lock-step with numpy; the chunk registers are then chained with
    the linear "shift by one chunk of zeros" map. The initial 0xFFFFFFFF register
    equals XOR-ing the first four data bytes with 0xFF, and leading zero padding
    leaves a zero register unchanged, which makes equal-size chunks possible.
    """
    n = len(data)
    if n < 2048:
        return crc32c_bytewise(data)
    chunk = 1 << max(6, (int(np.sqrt(n)) - 1).bit_length())
    padded = -(-n // chunk) * chunk
    buf = np.zeros(padded, dtype=np.uint8)
    buf[padded - n :] = np.frombuffer(data, dtype=np.uint8)
    buf[padded - n : padded - n + 4] ^= 0xFF
    rows = buf.reshape(-1, chunk).astype(np.uint32)
    regs = np.zeros(len(rows), dtype=np.uint32)
    for col in range(chunk):
        regs = _TABLE_NP[(regs ^ rows[:, col]) & 0xFF] ^ (regs >> 8)
    t0, t1, t2, t3 = _zero_shift_tables(chunk)
    crc = 0
    for reg in regs.tolist():
        crc = t0[crc & 0xFF] ^ t1[(crc >> 8) & 0xFF] ^ t2[(crc >> 16) & 0xFF] ^ t3[crc >> 24] ^ reg
    return crc ^ _U32


def _native_crc32c():
    """A compiled CRC-32C from the optional ``crc32c`` / ``google-crc32c`` packages, if one is installed."""
    try:
        import crc32c as package  # type: ignore[import-not-found]

        return package.crc32c
    except ImportError:
        pass
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return google_crc32c.value
    except ImportError:
        return None


_NATIVE = _native_crc32c()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: a compiled package when installed, else the numpy implementation."""
    if _NATIVE is not None:
        return int(_NATIVE(bytes(data)))
    return crc32c_numpy(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C rotated right by 15 bits plus a constant, so CRCs of CRCs look random."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


# --------------------------------------------------------------------------- record framing


def iter_records(path: str | Path, verify: bool = True) -> Iterator[tuple[int, bytes]]:
    """Yield ``(byte offset, payload)`` for every record of a TFRecord file.

    A truncated record or a checksum mismatch raises a MelaError naming the file
    and the byte offset of the broken record, so a bad download is found at once.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise MelaError(f"cannot read TFRecord file {path}: {exc.strerror or exc}") from exc
    offset, size = 0, len(blob)
    while offset < size:
        if size - offset < 12:
            raise MelaError(f"{path}: truncated record header at byte offset {offset}; the file is incomplete")
        header = blob[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", blob[offset + 8 : offset + 12])
        if verify and masked_crc32c(header) != length_crc:
            raise MelaError(f"{path}: bad length checksum in the record at byte offset {offset}; the file is corrupt")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > size:
            raise MelaError(
                f"{path}: truncated record at byte offset {offset} (needs {length + 16} bytes, "
                f"{size - offset} left); the file is incomplete"
            )
        payload = blob[start:end]
        (data_crc,) = struct.unpack("<I", blob[end : end + 4])
        if verify and masked_crc32c(payload) != data_crc:
            raise MelaError(f"{path}: bad data checksum in the record at byte offset {offset}; the file is corrupt")
        yield offset, payload
        offset = end + 4


def frame_record(payload: bytes) -> bytes:
    """One record's bytes as TFRecord writes them (length, its CRC, payload, payload CRC)."""
    header = struct.pack("<Q", len(payload))
    return header + struct.pack("<I", masked_crc32c(header)) + payload + struct.pack("<I", masked_crc32c(payload))


# --------------------------------------------------------------------------- protobuf wire format

FeatureValue = list[bytes] | list[float] | list[int]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field number, wire type, value)`` of a protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise ValueError("truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            if pos + 4 > len(buf):
                raise ValueError("truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _parse_feature(buf: bytes) -> FeatureValue:
    """Feature = oneof {BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3}."""
    result: FeatureValue = []
    for number, wire, value in _fields(buf):
        if wire != 2 or number not in (1, 2, 3):
            continue
        items: list = []
        for inner_number, inner_wire, item in _fields(value):  # type: ignore[arg-type]
            if inner_number != 1:
                continue
            if number == 1 and inner_wire == 2:
                items.append(bytes(item))  # type: ignore[arg-type]
            elif number == 2 and inner_wire == 2:
                items.extend(struct.unpack(f"<{len(item) // 4}f", item))  # type: ignore[arg-type]
            elif number == 2 and inner_wire == 5:
                items.append(struct.unpack("<f", item)[0])  # type: ignore[arg-type]
            elif number == 3 and inner_wire == 2:
                pos = 0
                while pos < len(item):  # type: ignore[arg-type]
                    raw, pos = _varint(item, pos)  # type: ignore[arg-type]
                    items.append(_signed64(raw))
            elif number == 3 and inner_wire == 0:
                items.append(_signed64(item))  # type: ignore[arg-type]
            else:
                raise ValueError(f"unexpected wire type {inner_wire} in a feature list")
        result = items
    return result


def parse_example(payload: bytes) -> dict[str, FeatureValue]:
    """Decode a serialised ``tf.train.Example`` into ``{feature name: list of values}``.

    Example = {Features features = 1}; Features = {map<string, Feature> feature = 1},
    each map entry being {string key = 1; Feature value = 2}.
    """
    features: dict[str, FeatureValue] = {}
    for number, wire, value in _fields(payload):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(value):  # type: ignore[arg-type]
            if entry_number != 1 or entry_wire != 2:
                continue
            key, feature = "", b""
            for field_number, _, field_value in _fields(entry):  # type: ignore[arg-type]
                if field_number == 1:
                    key = bytes(field_value).decode("utf-8")  # type: ignore[arg-type]
                elif field_number == 2:
                    feature = field_value  # type: ignore[assignment]
            features[key] = _parse_feature(feature)
    return features


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint((number << 3) | 2) + _encode_varint(len(payload)) + payload


def _encode_feature(value: object) -> bytes:
    """bytes/str (or a list of them) -> BytesList; ints -> Int64List; floats -> FloatList (packed)."""
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if all(isinstance(v, (bytes, str)) for v in values):
        body = b"".join(_delimited(1, v.encode() if isinstance(v, str) else v) for v in values)  # type: ignore[union-attr]
        return _delimited(1, body)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return _delimited(3, _delimited(1, b"".join(_encode_varint(int(v)) for v in values)))
    if all(isinstance(v, (int, float, np.floating, np.integer)) for v in values):
        return _delimited(2, _delimited(1, struct.pack(f"<{len(values)}f", *map(float, values))))
    raise TypeError(f"cannot store {type(value).__name__} in a tf.train.Feature")


def encode_example(features: Mapping[str, object]) -> bytes:
    """Serialise ``{name: value}`` as a ``tf.train.Example`` (the inverse of :func:`parse_example`)."""
    entries = b"".join(
        _delimited(1, _delimited(1, name.encode("utf-8")) + _delimited(2, _encode_feature(value)))
        for name, value in features.items()
    )
    return _delimited(1, entries)


def read_examples(path: str | Path, verify: bool = True) -> Iterator[dict[str, FeatureValue]]:
    """Yield every ``tf.train.Example`` of a TFRecord file, decoded; a malformed one names file and offset."""
    for offset, payload in iter_records(path, verify=verify):
        try:
            yield parse_example(payload)
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            raise MelaError(f"{path}: record at byte offset {offset} is not a valid tf.train.Example ({exc})") from exc


def write_tfrecord(path: str | Path, examples: Iterable[Mapping[str, object] | bytes]) -> Path:
    """Write examples (dicts, or already serialised payloads) as a TFRecord file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for example in examples:
            payload = example if isinstance(example, (bytes, bytearray)) else encode_example(example)
            handle.write(frame_record(bytes(payload)))
    return path
