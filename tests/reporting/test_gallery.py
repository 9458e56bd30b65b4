"""The gallery: legible thumbnails of any image, strips with the members' names, paged full lists."""

from __future__ import annotations

import io
import xml.dom.minidom

import numpy as np
import pytest
from PIL import Image

from mela.methods.doubt import class_doubt, truth_flags
from mela.reporting.gallery import (
    GAP,
    THUMB,
    build_gallery,
    gallery_html,
    load_gallery,
    save_gallery,
    strip_png,
    thumbnail,
    write_gallery_pages,
)


def checkerboard(size: int, channels: int) -> np.ndarray:
    cells = (np.add.outer(np.arange(size) // max(size // 8, 1), np.arange(size) // max(size // 8, 1)) % 2) * 255
    image = np.repeat(cells[..., None], channels, axis=2).astype(np.uint8)
    if channels >= 3:
        image[..., 0] = 255 - image[..., 0]  # colour: red where the others are dark
    return image


@pytest.mark.parametrize("size, channels", [(28, 1), (28, 3), (224, 1), (224, 3), (84, 1), (32, 4)])
def test_thumbnails_of_grey_colour_tiny_and_large_images_keep_their_pattern(size, channels) -> None:
    image = checkerboard(size, channels)
    thumb = np.asarray(thumbnail(image))
    assert thumb.shape[:2] == (THUMB, THUMB)
    assert (thumb.ndim == 2) == (channels == 1)
    # Legible: the 8 x 8 checkerboard survives, both tones far apart (no blur into grey, no aliasing into noise).
    grey = thumb if thumb.ndim == 2 else thumb[..., 1]
    expected = np.asarray(Image.fromarray(image[..., 1] if channels > 1 else image[..., 0]).resize(
        (THUMB, THUMB), Image.Resampling.BOX), dtype=float)
    assert np.corrcoef(grey.astype(float).ravel(), expected.ravel())[0, 1] > 0.9
    assert grey.min() < 40 and grey.max() > 215
    if channels >= 3:
        assert (thumb[..., 0].astype(int) - thumb[..., 1]).max() > 200  # the red survives


def test_a_strip_is_one_png_with_a_thumbnail_per_member() -> None:
    png = strip_png([checkerboard(28, 1)] * 3)
    image = Image.open(io.BytesIO(png))
    assert image.size == (3 * THUMB + 2 * GAP, THUMB) and image.mode == "L"
    assert Image.open(io.BytesIO(strip_png([checkerboard(28, 1), checkerboard(28, 3)]))).mode == "RGB"


def small_gallery(tmp_path):
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(6), 3)
    keys = rng.normal(size=(6, 8))[true] * 5 + rng.normal(size=(18, 8)) * 0.3
    labels = true.copy()
    labels[0] = 1  # a key of class 0 labelled 1: class 1 is mixed
    offsets = np.arange(0, 19, 3)  # tasks of 3 consecutive keys (one class each: no cannot-link)
    doubt = class_doubt(keys, labels, offsets, 0.09, 8.0)
    names = [f"g{v}" for v in doubt.labels]
    members = [[] for _ in names]
    for k, p in enumerate(doubt.member_class.tolist()):
        members[p].append((f"t{k // 3}", f"c<{k % 3}>", float(doubt.member_distance[k]), k))
    images = [checkerboard(28, 1), checkerboard(224, 3)]
    return build_gallery(names, members, doubt, lambda k: images[k % 2], truth_flags(doubt.member_class, true, 6))


def test_the_gallery_saves_loads_and_renders_well_formed_html_with_names_in_alt_text(tmp_path) -> None:
    gallery = small_gallery(tmp_path)
    assert gallery.classes[0].name == "g1" and gallery.classes[0].truth == {"mixed": True, "split": False}
    save_gallery(tmp_path, gallery)
    loaded = load_gallery(tmp_path)
    assert [c.name for c in loaded.classes] == [c.name for c in gallery.classes]
    assert loaded.strips == gallery.strips
    page = gallery_html(loaded, top=2, confident=2, near=2, prefix="run-", pages=["p/1.html"])
    doc = xml.dom.minidom.parseString(page)  # well-formed: the report embeds it in its XHTML-clean page
    areas = doc.getElementsByTagName("area")
    assert areas and all(a.getAttribute("alt") == a.getAttribute("title") for a in areas)
    assert "task t0, local class c<0>" in {a.getAttribute("alt") for a in areas}  # names escaped, not lost
    ids = {e.getAttribute("id") for e in doc.getElementsByTagName("*")}
    links = [a.getAttribute("href") for a in doc.getElementsByTagName("a") if a.getAttribute("href").startswith("#")]
    assert links and all(link[1:] in ids for link in links)
    assert "mixed (truth)" in page


def test_the_full_list_is_paged(tmp_path) -> None:
    gallery = small_gallery(tmp_path)
    pages = write_gallery_pages(gallery, tmp_path / "pages", "run", "every class", page_size=4)
    assert [p.name for p in pages] == ["run-001.html", "run-002.html"]
    assert sum(p.read_text().count('class="gc') for p in pages) == len(gallery.classes)
