"""The gallery of inferred global classes: a strip of thumbnails per class, most doubtful first.

learn_labeler builds it once (:func:`build_gallery`, with the images at hand) and saves it in its run folder
(:func:`save_gallery`: ``gallery.json`` for the classes, members and doubt, ``gallery_thumbs.npz`` for one
packed PNG strip per class); ``mela report`` and ``mela labels`` read it back (:func:`load_gallery`) without
the data. :func:`gallery_html` renders the review view (the most doubtful classes, a sample of confident
ones, the near misses side by side) as a self-contained, well-formed fragment; :func:`write_gallery_pages`
the full list, paged.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.jsonio import replaced_atomically, write_json_atomic

GALLERY_FILE, THUMBS_FILE, PAGE_FILE = "gallery.json", "gallery_thumbs.npz", "gallery.html"
THUMB = 48  # thumbnail side in pixels
GAP = 2  # pixels between two thumbnails of a strip
STRIP = 12  # thumbnails per class at most (the members nearest the centre)
PAGE_SIZE = 500  # classes per page of the full list
CSS = """.gal .gc{margin:6px 0;padding:4px;border-left:4px solid #9ab}.gal .gc.bad{border-color:#c33}
.gal .gh{font-size:0.85em;color:#333}.gal img.strip{max-width:none;image-rendering:pixelated;display:block}
.gal .pair{display:flex;gap:16px;flex-wrap:wrap;border:1px solid #ddd;margin:6px 0;padding:4px}
.gal .tag{font-size:0.8em;padding:0 4px;margin-left:4px;color:#fff;background:#c33;border-radius:3px}
.gal .ok{background:#393}.gal ol{columns:3;font-size:0.85em}"""


@dataclass
class GalleryClass:
    """One global class: its doubt (:mod:`mela.methods.doubt`), members nearest the centre first as
    ``[task, local_label, distance over noise]``, and what true labels say (``truth``: mixed, split), if any."""

    name: str
    size: int
    doubt: float
    spread: float
    split: float | None
    rival: str | None
    contested: int
    members: list[list] = field(default_factory=list)
    truth: dict | None = None


@dataclass
class Gallery:
    """Classes ranked most doubtful first, the near misses (pairs of names, split log-odds), the noise model's
    calibration, and with true labels the precision of the ranking; ``strips``: name -> PNG bytes."""

    classes: list[GalleryClass]
    near_misses: list[list] = field(default_factory=list)
    calibration: float = 1.0
    effective_dim: float = 0.0
    precision: dict | None = None
    source: str = "inferred"
    strips: dict[str, bytes] = field(default_factory=dict)

    def by_name(self) -> dict[str, GalleryClass]:
        return {c.name: c for c in self.classes}


# ---------------------------------------------------------------- thumbnails


def thumbnail(image: np.ndarray, size: int = THUMB, mode: str | None = None):
    """A ``size`` x ``size`` PIL image of an (H, W, C) uint8 image: 1 channel stays grey (``L``), 3 or more give
    RGB (``mode`` forces one);
    small images are enlarged pixel by pixel (legible, not blurred), large ones reduced with antialiasing;
    the aspect ratio is kept, on a grey background."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    pil = Image.fromarray(image[..., 0], "L") if image.shape[2] < 3 else Image.fromarray(image[..., :3], "RGB")
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    mode = mode or pil.mode
    pil = pil.convert(mode).resize(new, resample)
    canvas = Image.new(mode, (size, size), 128 if mode == "L" else (128, 128, 128))
    canvas.paste(pil, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def strip_png(images: Sequence[np.ndarray], size: int = THUMB) -> bytes:
    """One PNG holding the thumbnails side by side (``GAP`` pixels apart)."""
    from PIL import Image

    n = max(len(images), 1)
    grey = all(np.asarray(image).ndim == 2 or np.asarray(image).shape[2] < 3 for image in images)
    mode = "L" if grey else "RGB"
    canvas = Image.new(mode, (n * size + (n - 1) * GAP, size), 255 if grey else (255, 255, 255))
    for i, image in enumerate(images):
        canvas.paste(thumbnail(image, size, mode), (i * (size + GAP), 0))
    out = io.BytesIO()
    canvas.save(out, "PNG", compress_level=6)
    return out.getvalue()


# ---------------------------------------------------------------- building, saving, loading


def build_gallery(names: Sequence[str], members: Sequence[Sequence[tuple[str, str, float, int]]],
                  doubt, image_of: Callable[[int], np.ndarray], truth=None, near: int = 50, strip: int = STRIP,
                  source: str = "inferred", precision: dict | None = None) -> Gallery:
    """A gallery from a :class:`mela.methods.doubt.ClassDoubt` over classes ``names`` (its positions).

    ``members[p]``: (task, local label, distance over noise, task class index) of class p's members, any order;
    ``image_of(k)``: one image of task class k; ``truth``: :class:`mela.methods.doubt.TruthFlags` or None.
    """
    classes, strips = [], {}
    for p in doubt.ranking().tolist():
        rows = sorted(members[p], key=lambda m: (m[2] if math.isfinite(m[2]) else math.inf, m[0], m[1]))
        split = float(doubt.split[p])
        entry = GalleryClass(str(names[p]), int(doubt.sizes[p]), round(float(doubt.score[p]), 4),
                             round(float(doubt.spread[p]), 4), round(split, 4) if math.isfinite(split) else None,
                             str(names[doubt.rival[p]]) if doubt.rival[p] >= 0 else None, int(doubt.contested[p]),
                             [[t, loc, round(float(d), 4) if math.isfinite(d) else None] for t, loc, d, _ in rows])
        if truth is not None:
            entry.truth = {"mixed": bool(truth.mixed[p]), "split": bool(truth.split[p])}
        classes.append(entry)
        if rows:
            strips[entry.name] = strip_png([image_of(k) for *_, k in rows[:strip]])
    pairs = [[str(names[a]), str(names[b]), round(v, 4)] for a, b, v in doubt.near_misses(near)]
    out = Gallery(classes, pairs, float(doubt.calibration), float(doubt.effective_dim), precision, source)
    out.strips = strips
    return out


def save_gallery(run_dir: Path, gallery: Gallery) -> tuple[Path, Path]:
    """``gallery.json`` and ``gallery_thumbs.npz`` (the PNG strips packed into one byte array)."""
    data = {"source": gallery.source, "calibration": gallery.calibration, "effective_dim": gallery.effective_dim,
            "precision": gallery.precision, "near_misses": gallery.near_misses,
            "classes": [asdict(c) for c in gallery.classes]}
    json_path = Path(run_dir) / GALLERY_FILE
    write_json_atomic(json_path, data)
    names = [c.name for c in gallery.classes if c.name in gallery.strips]
    blobs = [gallery.strips[n] for n in names]
    offsets = np.cumsum([0, *map(len, blobs)]).astype(np.int64)
    packed = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    npz_path = Path(run_dir) / THUMBS_FILE
    with replaced_atomically(npz_path) as tmp:
        np.savez(tmp, png=packed, offsets=offsets, names=np.array(names, dtype=str))
    return json_path, npz_path


def load_gallery(run_dir: Path, with_strips: bool = True) -> Gallery | None:
    """The gallery a learn_labeler run saved, or None (an older run)."""
    path = Path(run_dir) / GALLERY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        classes = [GalleryClass(**c) for c in data["classes"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MelaError(f"{path} is not a gallery mela wrote ({type(exc).__name__}: {exc}); rerun learn_labeler "
                        "with another run_name") from exc
    gallery = Gallery(classes, data.get("near_misses", []), data.get("calibration", 1.0),
                      data.get("effective_dim", 0.0), data.get("precision"), data.get("source", "inferred"))
    thumbs = Path(run_dir) / THUMBS_FILE
    if with_strips and thumbs.is_file():
        with np.load(thumbs, allow_pickle=False) as stored:
            packed, offsets, names = stored["png"].tobytes(), stored["offsets"], stored["names"].tolist()
        gallery.strips = {n: packed[offsets[i] : offsets[i + 1]] for i, n in enumerate(names)}
    return gallery


# ---------------------------------------------------------------- HTML


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _doubt_text(c: GalleryClass) -> str:
    parts = [f"doubt {c.doubt:.2f}", f"spread {c.spread + 0.0:.2f}"]
    if c.split is not None:
        parts.append(f"split {c.split:.2f} vs {c.rival}")
    if c.contested:
        parts.append(f"{c.contested} member{'s' * (c.contested != 1)} nearer another class")
    return ", ".join(parts)


def _truth_tags(c: GalleryClass) -> str:
    if not c.truth:
        return ""
    tags = [k for k in ("mixed", "split") if c.truth.get(k)]
    if not tags:
        return '<span class="tag ok">clean (truth)</span>'
    return "".join(f'<span class="tag">{t} (truth)</span>' for t in tags)


def class_block(c: GalleryClass, strip: bytes | None, prefix: str) -> str:
    """One class: a heading (name, size, doubt, truth tags) and its strip, one thumbnail per member with the
    task and local class in its hover text and alt text."""
    esc = html.escape
    anchor = f"{prefix}gc-{_slug(c.name)}"
    bad = " bad" if c.truth and (c.truth.get("mixed") or c.truth.get("split")) else ""
    parts = [f'<div class="gc{bad}" id="{esc(anchor)}">',
             f'<div class="gh"><b>{esc(c.name)}</b> {c.size} member{"s" * (c.size != 1)}; '
             f"{esc(_doubt_text(c))}{_truth_tags(c)}</div>"]
    if strip:
        shown = c.members[:STRIP]
        width = len(shown) * THUMB + max(len(shown) - 1, 0) * GAP
        alt = f"{c.name}: " + "; ".join(f"task {m[0]}, local class {m[1]}" for m in shown)
        uri = "data:image/png;base64," + base64.b64encode(strip).decode("ascii")
        parts.append(f'<img class="strip" src="{uri}" width="{width}" height="{THUMB}" alt="{esc(alt)}" '
                     f'title="{esc(alt)}" usemap="#{esc(anchor)}-map" />')
        parts.append(f'<map name="{esc(anchor)}-map" id="{esc(anchor)}-map">')
        for i, m in enumerate(shown):
            x = i * (THUMB + GAP)
            label = f"task {m[0]}, local class {m[1]}"
            parts.append(f'<area shape="rect" coords="{x},0,{x + THUMB},{THUMB}" href="#{esc(anchor)}" '
                         f'title="{esc(label)}" alt="{esc(label)}" />')
        parts.append("</map>")
        if c.size > len(shown):
            parts.append(f'<div class="gh">and {c.size - len(shown)} more members</div>')
    parts.append("</div>")
    return "\n".join(parts)


def confident_sample(gallery: Gallery, count: int) -> list[GalleryClass]:
    """``count`` classes spread evenly over the less doubtful half (classes of 2+ members first)."""
    half = gallery.classes[len(gallery.classes) // 2 :]
    pool = [c for c in half if c.size >= 2] or half
    if count <= 0 or not pool:
        return []
    picks = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [pool[i] for i in picks.tolist()]


def gallery_html(gallery: Gallery, *, top: int = 50, confident: int = 10, near: int = 20, prefix: str = "",
                 pages: Sequence[str] = ()) -> str:
    """The review view: the ``top`` most doubtful classes (a linked list, then their strips), ``confident``
    less doubtful ones, ``near`` near misses side by side, and links to the full list's ``pages``."""
    esc = html.escape
    by_name = gallery.by_name()
    doubtful = gallery.classes[:top]
    head = (f"{len(gallery.classes)} global classes ({gallery.source} labels); the noise model is calibrated by "
            f"{gallery.calibration:.2f} (D = {gallery.effective_dim:.1f}). Two pieces of evidence, in decades, each "
            "rank the classes: spread (a member too far out for one class: mixed?) and split (log-odds that the "
            "closest class never met in the same task is the same class: split?). Doubt is -log10 of the class's "
            "best place on either ranking over the number of classes: 2 = among the top 1 %.")
    parts = [f'<div class="gal" id="{esc(prefix)}gallery">', f"<style>{CSS}</style>", f"<p>{esc(head)}</p>"]
    if gallery.precision:
        p = gallery.precision
        parts.append(f"<p>Against the true labels: {p['wrong']} of {p['classes']} classes are mixed or split; "
                     f"of the {p['top']} most doubtful (top {100 * p['fraction']:.0f} %), "
                     f"{100 * p['precision']:.0f} % are (a random ranking: {100 * p['base_rate']:.0f} %).</p>")
    parts.append(f'<h3 id="{esc(prefix)}doubtful">Most doubtful classes ({len(doubtful)} of '
                 f"{len(gallery.classes)})</h3>")
    parts.append('<ol class="doubtful">' + "".join(
        f'<li><a href="#{esc(prefix)}gc-{_slug(c.name)}">{esc(c.name)}</a> {c.doubt:.2f}</li>' for c in doubtful)
        + "</ol>")
    parts += [class_block(c, gallery.strips.get(c.name), prefix) for c in doubtful]
    sample = [c for c in confident_sample(gallery, confident) if c not in doubtful]
    if sample:
        parts.append(f"<h3>A sample of confident classes ({len(sample)})</h3>")
        parts += [class_block(c, gallery.strips.get(c.name), f"{prefix}conf-") for c in sample]
    pairs = [(by_name.get(a), by_name.get(b), v) for a, b, v in gallery.near_misses[:near]]
    pairs = [(a, b, v) for a, b, v in pairs if a is not None and b is not None]
    if pairs:
        parts.append(f"<h3>Near misses: pairs nearly merged ({len(pairs)})</h3>")
        for i, (a, b, v) in enumerate(pairs):
            parts.append(f'<div class="pair"><div class="gh">log-odds of one class {v:.2f}</div>')
            parts += [class_block(a, gallery.strips.get(a.name), f"{prefix}nm{i}a-"),
                      class_block(b, gallery.strips.get(b.name), f"{prefix}nm{i}b-"), "</div>"]
    if pages:
        links = " ".join(f'<a href="{esc(page)}">{i + 1}</a>' for i, page in enumerate(pages))
        parts.append(f"<p>Every class, most doubtful first, {PAGE_SIZE} per page: {links}</p>")
    parts.append("</div>")
    return "\n".join(parts)


def html_page(title: str, body: str) -> str:
    """A whole, self-contained page around ``body``."""
    esc = html.escape
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8" />',
                      f"<title>{esc(title)}</title>",
                      "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}</style>", "</head>",
                      "<body>", f"<h1>{esc(title)}</h1>", body, "</body>", "</html>", ""])


def write_gallery_pages(gallery: Gallery, out_dir: Path, stem: str, title: str,
                        page_size: int = PAGE_SIZE) -> list[Path]:
    """The full list, most doubtful first, ``page_size`` classes per self-contained page ``<stem>-NNN.html``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_pages = max(1, math.ceil(len(gallery.classes) / page_size))
    paths = [out_dir / f"{stem}-{i + 1:03d}.html" for i in range(n_pages)]
    for i, path in enumerate(paths):
        chunk = gallery.classes[i * page_size : (i + 1) * page_size]
        nav = " ".join(f'<a href="{p.name}">{j + 1}</a>' if j != i else f"<b>{j + 1}</b>" for j, p in enumerate(paths))
        body = [f"<p>Page {i + 1} of {n_pages}: {nav}</p>", f'<div class="gal"><style>{CSS}</style>']
        body += [class_block(c, gallery.strips.get(c.name), "") for c in chunk]
        body.append("</div>")
        with replaced_atomically(path) as tmp:
            tmp.write_text(html_page(f"{title}, page {i + 1}", "\n".join(body)), encoding="utf-8")
    return paths


def write_gallery_html(gallery: Gallery, run_dir: Path, title: str, top: int = 50) -> Path:
    """``gallery.html`` in the run folder (the review view) and its full list in ``gallery_pages/``."""
    pages = write_gallery_pages(gallery, Path(run_dir) / "gallery_pages", "classes", f"{title}: every class")
    body = gallery_html(gallery, top=top, pages=[f"gallery_pages/{p.name}" for p in pages])
    path = Path(run_dir) / PAGE_FILE
    with replaced_atomically(path) as tmp:
        tmp.write_text(html_page(title, body), encoding="utf-8")
    return path


def doubtful_rows(gallery: Gallery, count: int) -> list[dict]:
    """The ``count`` most doubtful classes as rows for review: one row per member."""
    rows = []
    for rank, c in enumerate(gallery.classes[:count], start=1):
        for task, local, distance in c.members:
            rows.append({"rank": rank, "global_class": c.name, "doubt": c.doubt, "spread": c.spread,
                         "split": "" if c.split is None else c.split, "rival": c.rival or "", "task": task,
                         "local_label": local, "distance": "" if distance is None else distance})
    return rows
