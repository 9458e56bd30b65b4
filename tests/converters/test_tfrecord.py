"""TFRecord framing, CRC-32C and tf.train.Example decoding, checked against hand-built bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from mela.converters import tfrecord
from mela.converters.tfrecord import (
    crc32c,
    crc32c_bytewise,
    crc32c_numpy,
    encode_example,
    iter_records,
    masked_crc32c,
    parse_example,
    read_examples,
    write_tfrecord,
)
from mela.errors import MelaError


def test_crc32c_of_the_standard_check_string_is_e3069283() -> None:
    assert crc32c_bytewise(b"123456789") == 0xE3069283
    assert crc32c_numpy(b"123456789") == 0xE3069283
    assert crc32c(b"123456789") == 0xE3069283


def test_crc32c_of_32_zero_bytes_matches_the_rfc3720_test_vector() -> None:
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43


@pytest.mark.parametrize("size", [0, 1, 4, 2047, 2048, 2049, 70_001, 300_000])
def test_the_vectorised_crc32c_agrees_with_the_bytewise_loop(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c_numpy(data) == crc32c_bytewise(data)


def test_an_installed_crc32c_package_agrees_with_the_pure_implementation() -> None:
    if tfrecord._NATIVE is None:
        pytest.skip("neither crc32c nor google-crc32c is installed")
    data = np.random.default_rng(7).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    assert tfrecord._NATIVE(data) == crc32c_numpy(data)


def test_a_hand_built_record_with_known_checksums_reads_back() -> None:
    payload = b"123456789"
    header = struct.pack("<Q", 9)
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(payload) == masked
    record = header + struct.pack("<I", masked_crc32c(header)) + payload + struct.pack("<I", masked)
    assert tfrecord.frame_record(payload) == record


def test_records_written_by_hand_come_back_with_their_offsets(tmp_path: Path) -> None:
    path = tmp_path / "two.tfrecords"
    path.write_bytes(tfrecord.frame_record(b"first") + tfrecord.frame_record(b"second!"))
    assert list(iter_records(path)) == [(0, b"first"), (21, b"second!")]


def test_an_example_with_bytes_int64_and_float_features_round_trips() -> None:
    features = {"image": b"\x89PNG", "label": 42, "negative": [-1, 3], "weights": [0.5, -2.25], "name": ["ab", "c"]}
    decoded = parse_example(encode_example(features))
    assert decoded == {
        "image": [b"\x89PNG"],
        "label": [42],
        "negative": [-1, 3],
        "weights": [0.5, -2.25],
        "name": [b"ab", b"c"],
    }


def test_the_example_encoding_matches_protobuf_wire_bytes_built_by_hand() -> None:
    # Example{features{feature{key:"label" value{int64_list{value:[5]}}}}}, packed int64 list.
    int64_list = b"\x0a\x01\x05"
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x05label" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    example = b"\x0a" + bytes([len(features)]) + features
    assert encode_example({"label": 5}) == example
    assert parse_example(example) == {"label": [5]}


def test_unpacked_int64_values_from_older_writers_are_decoded() -> None:
    int64_list = b"\x08\x07\x08\x09"  # two unpacked varints: 7 and 9
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x01y" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    assert parse_example(b"\x0a" + bytes([len(features)]) + features) == {"y": [7, 9]}


def test_a_data_checksum_error_names_the_file_and_the_record_offset(tmp_path: Path) -> None:
    path = write_tfrecord(tmp_path / "c.tfrecords", [{"label": 1}, {"label": 2}])
    raw = bytearray(path.read_bytes())
    first_length = struct.unpack("<Q", raw[:8])[0] + 16
    raw[first_length + 14] ^= 0x01  # flip a bit inside the second record's payload
    path.write_bytes(bytes(raw))
    with pytest.raises(MelaError, match=rf"{path}: bad data checksum in the record at byte offset {first_length};"):
        list(read_examples(path))


def test_a_length_checksum_error_names_the_file_and_offset_zero(tmp_path: Path) -> None:
    path = write_tfrecord(tmp_path / "c.tfrecords", [{"label": 1}])
    raw = bytearray(path.read_bytes())
    raw[8] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(MelaError, match=rf"{path}: bad length checksum in the record at byte offset 0"):
        list(iter_records(path))


def test_a_truncated_file_is_reported_with_the_offset_of_the_unfinished_record(tmp_path: Path) -> None:
    path = write_tfrecord(tmp_path / "t.tfrecords", [{"label": 1}, {"image": b"x" * 100}])
    raw = path.read_bytes()
    first_length = struct.unpack("<Q", raw[:8])[0] + 16
    path.write_bytes(raw[:-10])
    with pytest.raises(MelaError, match=rf"{path}: truncated record at byte offset {first_length}"):
        list(iter_records(path))
    path.write_bytes(raw[: first_length + 5])
    with pytest.raises(MelaError, match=rf"truncated record header at byte offset {first_length}"):
        list(iter_records(path))


def test_a_payload_that_is_not_an_example_is_reported_with_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "junk.tfrecords"
    path.write_bytes(tfrecord.frame_record(b"\x0a\xff\xff"))
    with pytest.raises(MelaError, match=rf"{path}: record at byte offset 0 is not a valid tf.train.Example"):
        list(read_examples(path))
