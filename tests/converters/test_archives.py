"""Download (never touching the network) and safe unpacking of the reference's archives."""

from __future__ import annotations

import io
import tarfile
import urllib.error
from pathlib import Path

import pytest

from mela.converters import archives
from mela.converters.archives import archive_path, download_archive, unpack_archive, unpack_archives
from mela.errors import MelaError


class FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def make_tar(path: Path, files: dict[str, bytes], symlink: tuple[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return path


def test_a_download_goes_through_a_part_file_to_the_archives_folder(tmp_path: Path) -> None:
    seen = []

    def opener(url: str, timeout: float) -> FakeResponse:
        seen.append(url)
        assert not (tmp_path / "archives" / "mini60.tar").exists()
        return FakeResponse(b"x" * 3_000_000)

    path = download_archive("mini60", tmp_path, progress=False, opener=opener)
    assert path == tmp_path / "archives" / "mini60.tar"
    assert path.stat().st_size == 3_000_000
    assert seen == [archives.ARCHIVE_URLS["mini60"]]
    assert not path.with_name("mini60.tar.part").exists()
    assert download_archive("mini60", tmp_path, progress=False, opener=None) == path  # present: not fetched again


def test_an_http_error_becomes_a_one_line_message_with_the_manual_fallback(tmp_path: Path) -> None:
    def opener(url: str, timeout: float) -> FakeResponse:
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)

    with pytest.raises(MelaError) as info:
        download_archive("aircraft", tmp_path, progress=False, opener=opener)
    url = archives.ARCHIVE_URLS["aircraft"]
    assert str(info.value) == (
        f"download of aircraft from {url} failed: Forbidden; download it by hand to "
        f"{tmp_path / 'archives' / 'aircraft.tar'} and run make unpack_datasets"
    )
    assert list((tmp_path / "archives").iterdir()) == []


def test_an_unreachable_file_url_fails_cleanly_without_the_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(archives.ARCHIVE_URLS, "cu_birds", (tmp_path / "nowhere" / "cub.tar").as_uri())
    with pytest.raises(MelaError, match=r"download of cu_birds from file://.*failed: .*download it by hand to"):
        download_archive("cu_birds", tmp_path, progress=False)


def test_an_unknown_archive_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"no prepared archive named 'imagenet'; choose one of: all, aircraft, cu_"):
        download_archive("imagenet", tmp_path)


def test_unpack_extracts_into_metaL_data_and_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    make_tar(archive_path(tmp_path, "miniImageNet"), {"miniImageNet/a.pickle": b"one", "miniImageNet/b.pickle": b"2"})
    result = unpack_archives(tmp_path, "miniImageNet")
    target = tmp_path / "metaL_data" / "miniImageNet"
    assert result == {"miniImageNet": [target]}
    assert (target / "a.pickle").read_bytes() == b"one"
    with pytest.raises(MelaError, match=rf"{target} already exists; delete it or pass --force"):
        unpack_archives(tmp_path, "miniImageNet")
    (target / "a.pickle").write_bytes(b"edited")
    assert unpack_archives(tmp_path, "all") == {"miniImageNet": []}  # `make unpack_datasets` again: skipped
    unpack_archives(tmp_path, "miniImageNet", force=True)
    assert (target / "a.pickle").read_bytes() == b"one"
    assert [p.name for p in (tmp_path / "metaL_data").iterdir()] == ["miniImageNet"]


def test_a_metaL_data_prefix_inside_the_archive_is_unwrapped(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar", {"metaL_data/aircraft/aircraft_train.pkl": b"p"})
    assert unpack_archive(archive, tmp_path / "out") == [tmp_path / "out" / "aircraft"]
    assert (tmp_path / "out" / "aircraft" / "aircraft_train.pkl").read_bytes() == b"p"


@pytest.mark.parametrize("name", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_members_escaping_the_target_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = make_tar(tmp_path / "evil.tar", {"fine/x": b"1", name: b"bad"})
    with pytest.raises(MelaError, match=r"contains an unsafe path"):
        unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_links_in_an_archive_are_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "link.tar", {"fine/x": b"1"}, symlink=("fine/passwd", "/etc/passwd"))
    with pytest.raises(MelaError, match=r"contains a link or special file 'fine/passwd'"):
        unpack_archive(archive, tmp_path / "out")


def test_unpacking_with_no_downloaded_archive_says_to_download_first(tmp_path: Path) -> None:
    with pytest.raises(MelaError, match=r"no archive found at .*archives; run `make download_all`"):
        unpack_archives(tmp_path, "all")


def test_a_file_that_is_not_a_tar_archive_is_reported(tmp_path: Path) -> None:
    bad = archive_path(tmp_path, "tiered780")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"<html>login required</html>")
    with pytest.raises(MelaError, match=r"tiered780.tar is not a readable tar archive"):
        unpack_archives(tmp_path, "tiered780")
