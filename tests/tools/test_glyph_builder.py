"""Pure pieces of the glyphs builder, on small synthetic arrays (no fonts, no downloads)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from mela.data_cli import load_glyph_builder
from mela.errors import MelaError

gb = load_glyph_builder()


def _bar(height: int, width: int, canvas: tuple[int, int] = (100, 80), at: tuple[int, int] = (10, 30)) -> np.ndarray:
    ink = np.zeros(canvas, dtype=np.uint8)
    ink[at[0] : at[0] + height, at[1] : at[1] + width] = 255
    return ink


def test_crop_and_centre_scales_a_tall_bar_to_the_full_height_and_centres_it():
    out = gb.crop_and_centre(_bar(60, 15))
    rows, cols = np.flatnonzero(out.max(axis=1) > 0), np.flatnonzero(out.max(axis=0) > 0)
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (rows[0], rows[-1]) == (2, 29)  # 28 rows inside a 2-pixel margin
    assert cols.size == 7 and abs((cols[0] + cols[-1]) / 2 - 15.5) <= 0.5


def test_crop_and_centre_keeps_the_aspect_ratio_of_a_wide_glyph():
    out = gb.crop_and_centre(_bar(10, 40))
    rows, cols = np.flatnonzero(out.max(axis=1) > 0), np.flatnonzero(out.max(axis=0) > 0)
    assert (cols[0], cols[-1]) == (2, 29) and rows.size == 7


def test_crop_and_centre_ignores_where_the_glyph_was_drawn():
    assert np.array_equal(gb.crop_and_centre(_bar(30, 20, at=(0, 0))), gb.crop_and_centre(_bar(30, 20, at=(50, 40))))


def test_blank_or_faint_render_is_rejected():
    assert gb.crop_and_centre(np.zeros((50, 50), np.uint8)) is None
    assert gb.crop_and_centre(np.full((50, 50), 40, np.uint8)) is None


def test_dedupe_merges_a_near_copy_and_keeps_a_different_design():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (40, 256)).astype(np.float32)
    features = np.stack([a, a + 3.0, 255.0 - a])
    present = np.ones((3, 40), dtype=bool)
    assert gb.dedupe(features, present, threshold=15.0, min_common=30).tolist() == [-1, 0, -1]


def test_dedupe_does_not_compare_faces_with_too_few_common_characters():
    features = np.zeros((2, 40, 256), dtype=np.float32)
    present = np.zeros((2, 40), dtype=bool)
    present[0, :20], present[1, 20:] = True, True
    assert gb.dedupe(features, present, threshold=15.0, min_common=30).tolist() == [-1, -1]


def test_outlier_rule_flags_the_one_render_that_is_a_different_shape():
    rng = np.random.default_rng(1)
    base = np.zeros((32, 32), np.float32)
    base[4:28, 14:18] = 255
    renders = [np.clip(base + rng.normal(0, 20, base.shape), 0, 255) for _ in range(12)]
    odd = np.zeros((32, 32), np.float32)
    odd[14:18, 4:28] = 255
    features = gb.correlation_features(np.stack(renders + [odd]))
    flags = gb.outlier_flags(gb.loo_correlations(features))
    assert flags.tolist() == [False] * 12 + [True]


def test_leave_one_out_correlation_of_identical_rows_is_one():
    features = gb.correlation_features(np.stack([gb.crop_and_centre(_bar(30, 10))] * 4))
    assert np.allclose(gb.loo_correlations(features), 1.0, atol=1e-5)


def test_greedy_distinct_drops_a_later_class_that_looks_like_an_earlier_one():
    similarity = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.3], [0.2, 0.3, 1.0]])
    counts = np.full((3, 3), 50)
    assert gb.greedy_distinct(similarity, counts, threshold=0.85, min_count=10) == [0, 2]
    counts[0, 1] = counts[1, 0] = 5  # too few faces drew both: no evidence of a collapse
    assert gb.greedy_distinct(similarity, counts, threshold=0.85, min_count=10) == [0, 1, 2]


def test_case_rule_drops_a_lowercase_letter_only_when_it_matches_its_capital():
    chars = ["O", "A", "o", "a"]
    similarity = np.eye(4)
    similarity[0, 2] = similarity[2, 0] = 0.8
    similarity[1, 3] = similarity[3, 1] = 0.4
    assert gb.case_collapsed(chars, similarity, threshold=0.72) == {"o"}


def test_small_caps_face_loses_its_lowercase_renders_but_keeps_capitals():
    e_cap = gb.crop_and_centre(_bar(60, 40))
    e_low = gb.crop_and_centre(_bar(30, 30))
    renders = {"caps": {"E": e_cap, "e": e_cap.copy()}, "normal": {"E": e_cap, "e": e_low}}
    cleaned, removed = gb.drop_small_caps(renders)
    assert removed == 1 and set(cleaned["caps"]) == {"E"} and set(cleaned["normal"]) == {"E", "e"}


def test_splits_are_stratified_by_script_and_stable_when_classes_are_added():
    chars = [chr(0x4E00 + i) for i in range(100)] + list("ABCDEFGHIJ")
    scripts = [0] * 100 + [1] * 10
    split = gb.assign_splits(chars, scripts)
    assert np.bincount(split[:100], minlength=3).tolist() == [64, 16, 20]
    assert np.bincount(split[100:], minlength=3).tolist() == [6, 2, 2]
    more = gb.assign_splits(chars + ["K"], scripts + [1])
    assert np.array_equal(more[:100], split[:100])


def test_every_script_gets_a_val_and_a_test_class_even_when_tiny():
    split = gb.assign_splits(list("xyz"), [0, 0, 0])
    assert sorted(split.tolist()) == [0, 1, 2]


def test_pick_designs_takes_one_face_per_package_before_a_second():
    names = [f"pkg{p}/font{i}.ttf#0" for p in range(3) for i in range(5)]
    picked = gb.pick_designs(names, 4)
    assert len(picked) == 4 and len({name.split("/")[0] for name in picked[:3]}) == 3
    assert gb.pick_designs(names, 4) == picked


def test_npz_writer_gives_identical_bytes_twice_and_round_trips(tmp_path):
    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "names": np.asarray(["a", "β"])}
    first, second = tmp_path / "a.npz", tmp_path / "b.npz"
    gb.write_npz(first, arrays)
    gb.write_npz(second, dict(reversed(list(arrays.items()))))
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert {info.date_time for info in archive.infolist()} == {gb.ZIP_DATE}
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(first, allow_pickle=False) as loaded:
        assert np.array_equal(loaded["images"], arrays["images"]) and loaded["names"].tolist() == ["a", "β"]


def test_candidates_leave_out_small_kana_and_letters_with_diacritics():
    chars = {ch for ch, _ in gb.base_candidates()}
    assert {"あ", "ア", "Ж", "λ"} <= chars
    assert not {"ぁ", "が", "Й", "ά", "ッ"} & chars


def test_level_one_kanji_come_from_the_codec_not_a_typed_table():
    kanji = gb.jis_level1_kanji()
    assert len(kanji) == 2965 and kanji[0] == "亜" and "日" in kanji


def test_licences_are_read_from_dep5_stanzas_and_skip_the_debian_packaging():
    text = "Files: *\nCopyright: x\nLicense: OFL-1.1\n text\n\nFiles: debian/*\nLicense: GPL-2+\n"
    assert gb.parse_licences(text) == ("OFL-1.1",)
    assert gb.parse_licences("This font is under the Arphic Public License.") == ("Arphic-1999",)


def test_missing_package_list_is_a_mela_error(tmp_path):
    with pytest.raises(MelaError, match="not found"):
        gb.read_package_list(tmp_path / "nope.txt")


def test_package_list_ignores_comments_and_blank_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("fonts-b\n# note\n\nfonts-a  # trailing\nfonts-b\n")
    assert gb.read_package_list(path) == ["fonts-a", "fonts-b"]
