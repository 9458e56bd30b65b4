"""The restricted unpickler: numpy arrays and plain data load at every protocol, anything callable is refused."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from mela.converters.cifar import read_cifar100
from mela.data.safe_pickle import UnsafePickleError, allowed_global, safe_load
from mela.data.seed_datasets import read_pickle
from mela.errors import MelaError

# {'data': uint8 [1, 2, 255], 'name': 'café', 'tags': {'a'}} exactly as Python 2 with numpy 1.x pickles it
# (protocol 2, byte strings, numpy.core names, __builtin__.set): the form of the reference's miniImageNet files.
PYTHON2_PICKLE = (
    b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85U\x01b"
    b"\x87Rq\x04(K\x01K\x03\x85cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff"
    b"\xff\xff\xffK\x00tb\x89U\x03\x01\x02\xfftbU\x04nameq\x07U\x04caf\xe9q\x08U\x04tagsc__builtin__\nset\n]q\tU\x01a"
    b"a\x85Rq\nu."
)


def _blob() -> dict:
    rng = np.random.default_rng(0)
    return {
        "data": rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
        "labels": [np.int64(7), np.int64(8), 9],
        "label_specific_str": ["n01", "n02"],
        "catname2label": OrderedDict([("n01", 0), ("n02", 1)]),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "raw": b"\x00\xff",
        "misc": (1.5, True, None, {2, 3}, frozenset({4}), complex(1, 2), bytearray(b"ab")),
    }


def _assert_same(loaded: dict, blob: dict) -> None:
    assert loaded.keys() == blob.keys()
    for key in ("data", "fortran"):
        assert loaded[key].dtype == blob[key].dtype and np.array_equal(loaded[key], blob[key])
    assert loaded["fortran"].flags.f_contiguous
    assert loaded["labels"] == [7, 8, 9] and isinstance(loaded["labels"][0], np.int64)
    for key in ("label_specific_str", "catname2label", "raw", "misc"):
        assert loaded[key] == blob[key]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_arrays_scalars_and_plain_containers_load_at_every_protocol(protocol: int) -> None:
    blob = _blob()
    _assert_same(safe_load(io.BytesIO(pickle.dumps(blob, protocol=protocol))), blob)


def _as_numpy1(data: bytes, protocol: int) -> bytes:
    """Rewrite a numpy 2 pickle to name ``numpy.core.*`` as numpy 1.x writes it."""
    if protocol == 2:  # GLOBAL opcodes carry "module\nname\n" as text
        return data.replace(b"cnumpy._core.", b"cnumpy.core.")
    # protocol 4: SHORT_BINUNICODE strings with a length byte, inside one FRAME whose length shrinks with them
    old, new = b"numpy._core.multiarray", b"numpy.core.multiarray"
    count = data.count(b"\x8c" + bytes([len(old)]) + old)
    out = data.replace(b"\x8c" + bytes([len(old)]) + old, b"\x8c" + bytes([len(new)]) + new)
    assert out[2] == 0x95 and count > 0
    frame = struct.unpack("<Q", out[3:11])[0]
    return out[:3] + struct.pack("<Q", frame - count * (len(old) - len(new))) + out[11:]


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_numpy_1x_pickle_naming_numpy_core_loads_under_the_installed_numpy(protocol: int) -> None:
    blob = {"data": np.arange(12, dtype=np.int16).reshape(3, 4), "labels": [np.int64(1), np.int64(2)]}
    data = _as_numpy1(pickle.dumps(blob, protocol=protocol), protocol)
    assert b"numpy.core.multiarray" in data and b"numpy._core" not in data
    loaded = safe_load(io.BytesIO(data))
    assert np.array_equal(loaded["data"], blob["data"]) and loaded["data"].dtype == np.int16
    assert loaded["labels"] == [1, 2]


def test_a_python2_pickle_with_latin1_byte_strings_loads() -> None:
    loaded = safe_load(io.BytesIO(PYTHON2_PICKLE), encoding="latin1")
    assert loaded["name"] == "café" and loaded["tags"] == {"a"}
    assert loaded["data"].dtype == np.uint8 and loaded["data"].tolist() == [1, 2, 255]
    assert loaded == pickle.loads(PYTHON2_PICKLE, encoding="latin1") | {"data": loaded["data"]}


class _Payload:
    def __init__(self, factory, *args) -> None:
        self.factory, self.args = factory, args

    def __reduce__(self):
        return self.factory, self.args


def _payloads(marker: Path) -> dict[str, object]:
    return {
        "posix.system": _Payload(os.system, f"touch {marker}"),
        "io.open": _Payload(io.open, str(marker), "w"),
        "subprocess.call": _Payload(subprocess.call, ["touch", str(marker)]),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
        "builtins.getattr": _Payload(getattr, "text", "upper"),
    }


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("name", ["posix.system", "io.open", "subprocess.call", "builtins.eval", "builtins.getattr"])
def test_a_reduce_payload_is_refused_by_name_and_never_runs(tmp_path: Path, protocol: int, name: str) -> None:
    marker = tmp_path / "payload_ran"
    data = pickle.dumps({"data": np.zeros(2), "x": _payloads(marker)[name]}, protocol=protocol)
    if name != "builtins.getattr":  # the payload is real: plain pickle.loads runs it and creates the marker
        loaded = pickle.loads(data)
        if name == "io.open":
            loaded["x"].close()
        assert marker.exists()
        marker.unlink()
    with pytest.raises(UnsafePickleError) as caught:
        safe_load(io.BytesIO(data))
    assert caught.value.name == name
    assert not marker.exists()


def test_codecs_encode_is_only_allowed_for_latin1_as_pickled_bytes_use_it() -> None:
    encode = allowed_global("_codecs", "encode")
    assert encode("\x00\xff", "latin1") == b"\x00\xff"
    with pytest.raises(UnsafePickleError, match="_codecs.encode with 'rot13'"):
        encode("abc", "rot13")


def test_read_pickle_refuses_a_malicious_data_set_file_in_one_line_and_does_not_run_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "miniImageNet_category_split_val.pickle"
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 2, 2, 3), np.uint8), "labels": _Payload(os.system,
                                   f"touch {marker}")}, protocol=2))
    with pytest.raises(MelaError) as caught:
        read_pickle(path)
    assert str(caught.value) == (f"{path} refers to posix.system, which a data set pickle never needs; mela refuses "
                                 "to load it (a pickle can run code): get the file again from its source")
    assert not marker.exists()


def test_read_pickle_still_reads_the_reference_python2_format(tmp_path: Path) -> None:
    path = tmp_path / "mini.pickle"
    path.write_bytes(PYTHON2_PICKLE)
    assert read_pickle(path)["name"] == "café"


def test_the_cifar_converter_refuses_a_malicious_member_of_the_archive(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"
    archive = tmp_path / "cifar-100-python.tar.gz"
    data = pickle.dumps({b"data": _Payload(os.system, f"touch {marker}")}, protocol=2)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(MelaError, match=r"cifar-100-python/train refers to posix.system, .* download .* again"):
        read_cifar100(archive)
    assert not marker.exists()
