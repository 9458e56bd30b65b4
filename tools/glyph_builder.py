"""Build the shipped ``glyphs`` data set (an Omniglot-style set of real font glyphs).

Why a builder: the shipped ``glyphs.npz`` must be reproducible from public inputs.
It downloads the Debian font packages named in two list files (``apt-get download``
plus ``dpkg-deb -x``, no root needed), renders every wanted character of every
usable face tightly cropped and centred at 32x32, keeps only distinct designs that
really draw the character, picks classes that stay distinguishable once cropped,
and writes one deterministic compressed ``.npz`` (same inputs, same bytes), a
contact sheet and a NOTICE listing the source packages and their licences.

Every threshold below is documented in ``docs/glyphs.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import string
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from mela.errors import MelaError

IMAGE_SIZE = 32
MARGIN = 2  # pixels of black border around the scaled glyph
RENDER_PX = 64  # font size used before cropping and scaling down
CROP_LEVEL = 8  # a pixel brighter than this counts as ink when cropping
MIN_PEAK = 128  # a render whose brightest pixel is dimmer than this is blank

# Two faces are one design when their renders of the reference characters differ by
# less than this mean absolute pixel difference (0..255 scale, 16x16 pooled images).
DEDUPE_MAD = 15.0
DEDUPE_MIN_COMMON = 30  # reference characters both faces must draw to be compared
# A render fails when its correlation with the leave-one-out class mean is more than
# OUTLIER_Z robust standard deviations (1.4826 * MAD, at least OUTLIER_MIN_SPREAD) below the class median.
OUTLIER_Z = 4.0
OUTLIER_MIN_SPREAD = 0.03
FACE_FAIL_FRACTION = 0.2  # a face failing more than this share of its renders is dropped whole
# A lowercase letter (Latin, Greek, Cyrillic) is dropped when its mean same-face correlation
# with its own capital is above this: cropped and rescaled, it is the capital again.
CASE_CORR = 0.72
# A face's lowercase render is dropped when it correlates with the same face's capital above this
# (small-caps and all-caps faces draw the capital at both code points).
SMALL_CAPS_CORR = 0.9
SMALL_CAPS_FACE_MEDIAN = 0.8
# Any class is dropped when its mean same-face correlation with an earlier accepted class is above this.
COLLAPSE_CORR = 0.85
COLLAPSE_MIN_FACES = 10
MIN_DESIGNS = 30
MAX_DESIGNS = 40  # keeps the shipped file a few MB; see pick_designs for which ones
N_KANJI = 300
N_KANJI_CANDIDATES = 600
SPLIT_FRACTIONS = (0.64, 0.16, 0.20)
SPLIT_SALT = "mela-glyphs-split-v1"
ZIP_DATE = (2024, 1, 1, 0, 0, 0)

SCRIPT_NAMES = (
    "latin_upper",
    "latin_lower",
    "digit",
    "symbol",
    "greek",
    "cyrillic",
    "hiragana",
    "katakana",
    "kanji",
)
ALPHA_SCRIPTS = frozenset(range(6))  # scripts drawn by Latin-type faces
SYMBOLS = string.punctuation + "§¶©®°±×÷¢£¥€¿¡‰†‡•∞≈≠≤≥√♠♣♥♦"
ALPHA_REFERENCE = string.ascii_uppercase + string.ascii_lowercase + string.digits
N_CJK_REFERENCE_KANA = 46  # the basic hiragana, in code-point order
N_CJK_REFERENCE_KANJI = 40  # the most covered kanji
MIN_REFERENCE = 40  # a face must draw this many reference characters to take part
FONT_SUFFIXES = frozenset({".ttf", ".otf", ".ttc", ".otc"})
REGULAR_STYLES = frozenset({"regular", "book", "roman", "normal", "plain"})


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    root: Path
    licences: tuple[str, ...]


@dataclass(frozen=True)
class Face:
    """One face of one font file; ``chars`` are the wanted characters its cmap really maps."""

    name: str
    path: Path
    index: int
    package: str
    regular: bool
    chars: frozenset[str] = field(repr=False)


# ---------------------------------------------------------------- pure pieces


def _is_plain(ch: str) -> bool:
    """No precomposed diacritics (が, Й, ά) and no small kana: they collapse onto their base letter."""
    name = unicodedata.name(ch, "")
    return bool(name) and not unicodedata.decomposition(ch) and "LETTER SMALL" not in name


def _letters(first: int, last: int) -> list[str]:
    chars = (chr(code) for code in range(first, last + 1))
    return [ch for ch in chars if _is_plain(ch) and unicodedata.category(ch).startswith("L")]


def base_candidates() -> list[tuple[str, int]]:
    """Every non-kanji candidate class as (character, script id), in priority order."""
    groups = [
        list(string.ascii_uppercase),
        list(string.ascii_lowercase),
        list(string.digits),
        list(SYMBOLS),
        _letters(0x0391, 0x03C9),
        _letters(0x0400, 0x045F),
        _letters(0x3041, 0x3096),
        _letters(0x30A1, 0x30FA),
    ]
    return [(ch, script) for script, chars in enumerate(groups) for ch in chars]


def jis_level1_kanji() -> list[str]:
    """JIS X 0208 level-1 kanji (the common set), derived from Python's EUC-JP codec, not typed in."""
    chars = []
    for row in range(0xB0, 0xD0):
        for cell in range(0xA1, 0xFF):
            try:
                ch = bytes([row, cell]).decode("euc_jp")
            except UnicodeDecodeError:
                continue
            if unicodedata.name(ch, "").startswith("CJK UNIFIED IDEOGRAPH"):
                chars.append(ch)
    return chars


def stable_hash(text: str, salt: str = "") -> int:
    """A hash that does not change across processes (Python's ``hash`` is salted)."""
    return int.from_bytes(hashlib.sha256(f"{salt}{text}".encode()).digest()[:8], "big")


def crop_and_centre(ink: np.ndarray, size: int = IMAGE_SIZE, margin: int = MARGIN) -> np.ndarray | None:
    """Crop ``ink`` (bright on black) to its ink, scale it to fit ``size - 2*margin`` keeping aspect, centre it.

    Returns ``None`` for a blank render (a face mapping the char to an empty glyph).
    """
    if ink.size == 0 or int(ink.max()) < MIN_PEAK:
        return None
    mask = ink > CROP_LEVEL
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    crop = np.ascontiguousarray(ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    height, width = crop.shape
    box = size - 2 * margin
    scale = box / max(height, width)
    new_h = min(box, max(1, round(height * scale)))
    new_w = min(box, max(1, round(width * scale)))
    # Area averaging when shrinking: no ringing halo, so the black background stays 0 (and compresses well).
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(crop).resize((new_w, new_h), resample))
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def pooled(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32) uint8 -> (n, 256) float32 2x2-average-pooled pixels: cheap, and forgiving of 1-pixel shifts."""
    x = images.astype(np.float32).reshape(len(images), IMAGE_SIZE // 2, 2, IMAGE_SIZE // 2, 2)
    return x.mean(axis=(2, 4)).reshape(len(images), -1)


def correlation_features(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32) -> (n, 1024) blurred, centred, unit-norm vectors: dot products are pixel correlations.

    The blur (sigma 1 px) keeps thin strokes that are one pixel apart from counting as unrelated.
    """
    x = gaussian_filter(images.astype(np.float32), sigma=(0, 1, 1)).reshape(len(images), -1)
    x -= x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-6)


def dedupe(features: np.ndarray, present: np.ndarray, threshold: float, min_common: int) -> np.ndarray:
    """Greedy design de-duplication; faces are visited in the given order.

    ``features`` (F, R, D) pooled reference renders, ``present`` (F, R) which exist.
    Returns (F,) int: -1 for a kept face, else the index of the kept face it duplicates.
    A face is a duplicate when its mean absolute difference over the reference characters
    both draw (at least ``min_common``) is below ``threshold``.
    """
    duplicate_of = np.full(len(features), -1, dtype=np.int64)
    kept: list[int] = []
    for face in range(len(features)):
        if kept:
            others = np.asarray(kept)
            common = present[others] & present[face]
            n_common = common.sum(axis=1)
            diff = np.abs(features[others] - features[face]).mean(axis=2)
            mad = (diff * common).sum(axis=1) / np.maximum(n_common, 1)
            mad = np.where(n_common >= min_common, mad, np.inf)
            if mad.min() < threshold:
                duplicate_of[face] = others[int(np.argmin(mad))]
                continue
        kept.append(face)
    return duplicate_of


def loo_correlations(features: np.ndarray) -> np.ndarray:
    """Correlation of each unit-norm row with the mean of all other rows (leave-one-out class mean)."""
    if len(features) < 2:
        return np.ones(len(features), dtype=np.float32)
    loo = features.sum(axis=0, keepdims=True) - features
    loo /= np.maximum(np.linalg.norm(loo, axis=1, keepdims=True), 1e-6)
    return (features * loo).sum(axis=1)


def outlier_flags(corr: np.ndarray, z: float = OUTLIER_Z, min_spread: float = OUTLIER_MIN_SPREAD) -> np.ndarray:
    """True where a render's leave-one-out correlation is far below its class's typical value."""
    median = np.median(corr)
    spread = max(1.4826 * float(np.median(np.abs(corr - median))), min_spread)
    return corr < median - z * spread


def greedy_distinct(similarity: np.ndarray, counts: np.ndarray, threshold: float, min_count: int) -> list[int]:
    """Accept classes in index order, dropping one that looks like an accepted class.

    ``similarity[i, j]`` is the mean same-face correlation of classes i and j over
    ``counts[i, j]`` faces; pairs seen in fewer than ``min_count`` faces are ignored.
    """
    accepted: list[int] = []
    for cls in range(len(similarity)):
        if accepted:
            sims = similarity[cls, accepted]
            seen = counts[cls, accepted] >= min_count
            if np.any(seen & (sims > threshold)):
                continue
        accepted.append(cls)
    return accepted


def case_collapsed(chars: Sequence[str], similarity: np.ndarray, threshold: float = CASE_CORR) -> set[str]:
    """Lowercase letters whose renders correlate with their own capital's above ``threshold``."""
    index = {ch: i for i, ch in enumerate(chars)}
    out = set()
    for ch in chars:
        upper = ch.upper()
        if upper != ch and upper in index and similarity[index[ch], index[upper]] > threshold:
            out.add(ch)
    return out


def pick_designs(face_names: Sequence[str], limit: int) -> list[str]:
    """Up to ``limit`` faces, one per package in turn, so no single foundry dominates a class.

    Order inside a package and between packages is a fixed hash of the names (stable across builds).
    """
    by_package: dict[str, list[str]] = {}
    for name in face_names:
        by_package.setdefault(name.split("/", 1)[0], []).append(name)
    keyed = []
    for package, names in by_package.items():
        for rank, name in enumerate(sorted(names, key=lambda n: stable_hash(n, "design"))):
            keyed.append((rank, stable_hash(package, "package"), name))
    return [name for *_, name in sorted(keyed)[:limit]]


def assign_splits(
    chars: Sequence[str], scripts: Sequence[int], fractions: Sequence[float] = SPLIT_FRACTIONS
) -> np.ndarray:
    """Split ids (0 train, 1 val, 2 test) stratified by script, from a salted hash of each character.

    Hash order (not a random stream) keeps a class's split unchanged when other classes
    come or go in a later release. Every script gets at least one val and one test class.
    """
    split = np.zeros(len(chars), dtype=np.int8)
    for script in sorted(set(scripts)):
        members = [i for i, s in enumerate(scripts) if s == script]
        members.sort(key=lambda i: stable_hash(chars[i], SPLIT_SALT))
        n_test = max(1, round(fractions[2] * len(members)))
        n_val = max(1, round(fractions[1] * len(members)))
        for rank, i in enumerate(members):
            split[i] = 2 if rank < n_test else 1 if rank < n_test + n_val else 0
    return split


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-able .npz whose bytes depend only on ``arrays`` (fixed member dates and order)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


# Free-text copyright files (not machine-readable DEP-5) are recognised by these phrases.
LICENCE_PHRASES = (
    ("SIL Open Font License, Version 1.1", "OFL-1.1"),
    ("SIL Open Font License, Version 1.0", "OFL-1.0"),
    ("Arphic Public License", "Arphic-1999"),
    ("GUST Font License", "GUST-font-license"),
    ("GNU General Public License", "GPL"),
    ("Apache License", "Apache-2.0"),
    ("public domain", "public-domain"),
)


def parse_licences(copyright_text: str) -> tuple[str, ...]:
    """Licence short names of a Debian copyright file, skipping the packaging's own ``debian/*`` stanza.

    Falls back to well-known licence phrases when the file is not machine-readable.
    """
    found: list[str] = []
    for stanza in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:\s*(.*)$", stanza, flags=re.MULTILINE)
        if files and files.group(1).strip().startswith("debian/"):
            continue
        for match in re.finditer(r"^License:[ \t]*(\S.*)$", stanza, flags=re.MULTILINE):
            name = match.group(1).strip()
            if name not in found:
                found.append(name)
    if not found:
        lowered = " ".join(copyright_text.split()).lower()  # phrases may wrap across lines
        found = [short for phrase, short in LICENCE_PHRASES if phrase.lower() in lowered]
    return tuple(found)


# ---------------------------------------------------------------- fetching


def read_package_list(path: Path) -> list[str]:
    """Package names, one a line; blank lines and ``#`` comments ignored."""
    if not path.is_file():
        raise MelaError(f"font package list {path} not found; pass --latin-packages / --cjk-packages with a real file")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return sorted({name for name in names if name})


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        raise MelaError(
            f"`{cmd[0]}` not found; the glyph builder needs a Debian system with apt-get and dpkg-deb"
        ) from exc


def fetch_packages(names: Iterable[str], workdir: Path) -> list[Package]:
    """Download (``apt-get download``) and unpack (``dpkg-deb -x``) each package, reusing earlier downloads."""
    debs, extract = workdir / "debs", workdir / "extract"
    debs.mkdir(parents=True, exist_ok=True)
    names = sorted(names)
    missing = [name for name in names if not sorted(debs.glob(f"{name}_*.deb"))]
    if missing:
        try:
            _run(["apt-get", "download", *missing], cwd=debs)
        except subprocess.CalledProcessError:
            for name in missing:  # one bad name must not sink the rest
                try:
                    _run(["apt-get", "download", name], cwd=debs)
                except subprocess.CalledProcessError as exc:
                    print(f"warning: cannot download {name}: {exc.stderr.strip()[-200:]}", file=sys.stderr)
    packages = []
    for name in names:
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            continue
        deb = found[-1]
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
        root = extract / name
        marker = root / ".extracted"
        if not marker.exists() or marker.read_text() != deb.name:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            _run(["dpkg-deb", "-x", str(deb), str(root)])
            marker.write_text(deb.name)
        copyright_file = root / "usr" / "share" / "doc" / name / "copyright"
        text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
        packages.append(Package(name, version, root, parse_licences(text)))
    if not packages:
        raise MelaError("no font package could be downloaded; run `apt-get update` first, or check the package lists")
    return packages


# ---------------------------------------------------------------- fonts


def _font_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file() and not p.is_symlink()]
    return sorted(files)


def _mapped_chars(font, wanted: frozenset[str]) -> frozenset[str]:
    """Wanted characters the cmap maps to a real glyph (not .notdef / glyph 0)."""
    cmap = font.getBestCmap() or {}
    return frozenset(ch for ch in wanted if cmap.get(ord(ch), ".notdef") not in (".notdef", "glyph00000"))


def list_faces(package: Package, wanted: frozenset[str]) -> list[Face]:
    """Every face of every font file of ``package`` that maps at least one wanted character."""
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    faces = []
    for path in _font_files(package.root):
        try:
            with path.open("rb") as fh:
                is_collection = fh.read(4) == b"ttcf"
            fonts = TTCollection(str(path), lazy=True).fonts if is_collection else [TTFont(str(path), lazy=True)]
            for index, font in enumerate(fonts):
                chars = _mapped_chars(font, wanted)
                style = (font["name"].getDebugName(2) or "") if "name" in font else ""
                if chars:
                    name = f"{package.name}/{path.relative_to(package.root).as_posix()}#{index}"
                    faces.append(Face(name, path, index, package.name, style.strip().lower() in REGULAR_STYLES, chars))
        except (TTLibError, OSError, KeyError, AssertionError, ValueError, struct.error) as exc:
            print(f"warning: skipping unreadable font {path}: {exc}", file=sys.stderr)
    return faces


def render_glyph(font: ImageFont.FreeTypeFont, ch: str) -> np.ndarray | None:
    """Draw ``ch`` at RENDER_PX on its own canvas and return the 32x32 cropped, centred image (or None if blank)."""
    left, top, right, bottom = font.getbbox(ch)
    width, height = right - left, bottom - top
    if width <= 0 or height <= 0 or width > 20 * RENDER_PX or height > 20 * RENDER_PX:
        return None
    canvas = Image.new("L", (width + 4, height + 4), 0)
    ImageDraw.Draw(canvas).text((2 - left, 2 - top), ch, font=font, fill=255)
    return crop_and_centre(np.asarray(canvas))


def render_face(face: Face, chars: Iterable[str]) -> dict[str, np.ndarray]:
    """Renders of the given characters that ``face`` maps and that are not blank."""
    wanted = sorted(set(chars) & face.chars)
    if not wanted:
        return {}
    try:
        font = ImageFont.truetype(str(face.path), RENDER_PX, index=face.index, layout_engine=ImageFont.Layout.BASIC)
    except OSError as exc:
        print(f"warning: FreeType cannot open {face.name}: {exc}", file=sys.stderr)
        return {}
    out = {}
    for ch in wanted:
        try:
            image = render_glyph(font, ch)
        except (OSError, ValueError):
            image = None
        if image is not None:
            out[ch] = image
    return out


# ---------------------------------------------------------------- pipeline stages


def _log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", file=sys.stderr, flush=True)


def distinct_faces(faces: list[Face], reference: str, min_reference: int) -> tuple[list[Face], dict[str, str]]:
    """Faces that draw at least ``min_reference`` reference characters and are not a duplicate design.

    Regular styles are visited first, so a family's regular face is the one kept.
    Returns the kept faces and, for each dropped duplicate, the face it duplicates.
    """
    ordered = sorted(faces, key=lambda f: (not f.regular, f.name))
    renders = [render_face(f, reference) for f in ordered]
    usable = [i for i, r in enumerate(renders) if len(r) >= min_reference]
    present = np.zeros((len(usable), len(reference)), dtype=bool)
    features = np.zeros((len(usable), len(reference), (IMAGE_SIZE // 2) ** 2), dtype=np.float32)
    for row, i in enumerate(usable):
        for col, ch in enumerate(reference):
            if ch in renders[i]:
                present[row, col] = True
                features[row, col] = pooled(renders[i][ch][None])[0]
    duplicate_of = dedupe(features, present, DEDUPE_MAD, min(DEDUPE_MIN_COMMON, min_reference))
    kept = [ordered[i] for row, i in enumerate(usable) if duplicate_of[row] < 0]
    dups = {
        ordered[i].name: ordered[usable[duplicate_of[row]]].name
        for row, i in enumerate(usable)
        if duplicate_of[row] >= 0
    }
    return kept, dups


def drop_outliers(renders: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Remove faces that fail many classes, then single renders unlike their class (see module constants)."""

    def failures(current: dict[str, dict[str, np.ndarray]]) -> set[tuple[str, str]]:
        by_class: dict[str, list[str]] = {}
        for face in sorted(current):
            for ch in current[face]:
                by_class.setdefault(ch, []).append(face)
        failed = set()
        for ch in sorted(by_class):
            names = by_class[ch]
            feats = correlation_features(np.stack([current[f][ch] for f in names]))
            for f, bad in zip(names, outlier_flags(loo_correlations(feats)), strict=True):
                if bad:
                    failed.add((f, ch))
        return failed

    failed = failures(renders)
    dropped = []
    for face in sorted(renders):
        n_failed = sum(1 for ch in renders[face] if (face, ch) in failed)
        if n_failed > FACE_FAIL_FRACTION * len(renders[face]):
            dropped.append(face)
    kept = {face: r for face, r in renders.items() if face not in dropped}
    failed = failures(kept)
    cleaned = {face: {ch: img for ch, img in r.items() if (face, ch) not in failed} for face, r in kept.items()}
    return cleaned, dropped


def drop_small_caps(
    renders: dict[str, dict[str, np.ndarray]],
    skip: set[str] = frozenset(),
    threshold: float = SMALL_CAPS_CORR,
    face_threshold: float = SMALL_CAPS_FACE_MEDIAN,
) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """Remove lowercase renders that are the face's own capital again; returns the renders and how many went.

    A render goes when it correlates with the same face's capital above ``threshold``; all of a
    face's lowercase go when the median over its letters is above ``face_threshold`` (a small-caps
    face whose lowercase are redrawn capitals). Letters in ``skip`` (already dropped by the case
    rule, where lowercase and capital look alike in every face) are left out of both tests.
    """
    cleaned, removed = {}, 0
    for face in sorted(renders):
        own = renders[face]
        pairs = [ch for ch in sorted(own) if ch not in skip and len(ch.upper()) == 1 and ch.upper() != ch]
        pairs = [ch for ch in pairs if ch.upper() in own]
        drop: set[str] = set()
        if pairs:
            lower = correlation_features(np.stack([own[ch] for ch in pairs]))
            upper = correlation_features(np.stack([own[ch.upper()] for ch in pairs]))
            corr = (lower * upper).sum(axis=1)
            small_caps_face = float(np.median(corr)) > face_threshold
            drop = {ch for ch, c in zip(pairs, corr, strict=True) if small_caps_face or c > threshold}
        removed += len(drop)
        cleaned[face] = {ch: img for ch, img in own.items() if ch not in drop}
    return cleaned, removed


def pair_similarity(renders: dict[str, dict[str, np.ndarray]], chars: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean same-face correlation between every two classes, and how many faces drew both."""
    index = {ch: i for i, ch in enumerate(chars)}
    total = np.zeros((len(chars), len(chars)), dtype=np.float64)
    counts = np.zeros((len(chars), len(chars)), dtype=np.int64)
    for face in sorted(renders):
        own = [ch for ch in sorted(renders[face]) if ch in index]
        if len(own) < 2:
            continue
        feats = correlation_features(np.stack([renders[face][ch] for ch in own]))
        ids = np.asarray([index[ch] for ch in own])
        total[np.ix_(ids, ids)] += feats @ feats.T
        counts[np.ix_(ids, ids)] += 1
    return total / np.maximum(counts, 1), counts


# ---------------------------------------------------------------- outputs


def contact_sheet(
    images: np.ndarray,
    labels: np.ndarray,
    chars: Sequence[str],
    scripts: Sequence[int],
    label_faces: Sequence[Face],
    path: Path,
    n_classes: int = 40,
    n_designs: int = 12,
    scale: int = 2,
) -> None:
    """A PNG grid: ``n_classes`` classes spread over every script (rows) x ``n_designs`` designs, labelled."""
    per_script: dict[int, list[int]] = {}
    for cls, script in enumerate(scripts):
        per_script.setdefault(script, []).append(cls)
    picks: list[int] = []
    queues = [sorted(per_script[s], key=lambda c: stable_hash(chars[c], "sheet")) for s in sorted(per_script)]
    while len(picks) < n_classes and any(queues):
        for queue in queues:
            if queue and len(picks) < n_classes:
                picks.append(queue.pop(0))
    picks.sort()
    cell = IMAGE_SIZE * scale
    gap = 2
    sheet = Image.new("L", ((n_designs + 1) * (cell + gap), len(picks) * (cell + gap)), 60)
    for row, cls in enumerate(picks):
        y = row * (cell + gap)
        label = Image.new("L", (cell, cell), 255)
        face = next((f for f in label_faces if chars[cls] in f.chars), None)
        if face is not None:
            font = ImageFont.truetype(str(face.path), cell // 2, index=face.index)
            ImageDraw.Draw(label).text((cell // 2, cell // 2), chars[cls], font=font, fill=0, anchor="mm")
        sheet.paste(label, (0, y))
        rows = np.flatnonzero(labels == cls)[:n_designs]
        for col, i in enumerate(rows, start=1):
            tile = Image.fromarray(images[i]).resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (col * (cell + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=False)


def notice_text(packages: Sequence[Package], used_faces: dict[str, int]) -> str:
    """The data NOTICE: which font packages (and licences) the shipped images are renders of."""
    lines = [
        "# glyphs data set: sources and licences",
        "",
        "`glyphs.npz` holds 32x32 renders of characters drawn by the fonts of the Debian packages",
        "below (Debian bookworm, fetched with `apt-get download`). The images are renders of those",
        "fonts; each font keeps its own licence, taken from the package's `debian/copyright`",
        "(`/usr/share/doc/PACKAGE/copyright` inside the package). Built by `mela data build-glyphs`",
        "(`tools/glyph_builder.py`); see `docs/glyphs.md` for how.",
        "",
        "| package | version | designs used | licences (debian/copyright) |",
        "| --- | --- | ---: | --- |",
    ]
    for pkg in packages:
        if used_faces.get(pkg.name):
            licences = (", ".join(pkg.licences) or "see the package's copyright file").replace("|", "\\|")
            lines.append(f"| {pkg.name} | {pkg.version} | {used_faces[pkg.name]} | {licences} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Every input and output is named by the caller: the builder assumes no checkout layout."""
    parser = argparse.ArgumentParser(prog="mela data build-glyphs", description="Build the shipped glyphs data set.")
    parser.add_argument("--out", type=Path, required=True,
                        help="the npz to write (the shipped one: src/mela/data/assets/glyphs.npz)")
    parser.add_argument("--notice", type=Path, default=None, help="NOTICE path (default: NOTICE.md beside --out)")
    parser.add_argument("--sheet", type=Path, required=True,
                        help="contact sheet PNG to write (the shipped one: docs/glyphs_contact_sheet.png)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glyph_build"), help="download/extraction cache")
    parser.add_argument("--latin-packages", type=Path, required=True,
                        help="Debian font packages for the Latin-type scripts, one a line")
    parser.add_argument("--cjk-packages", type=Path, required=True, help="Debian font packages for kana and kanji")
    return parser.parse_args(argv)


def select_designs(
    faces: list[Face], kana: Sequence[str], kanji_pool: Sequence[str], start: float
) -> tuple[list[Face], list[Face], list[str]]:
    """Distinct Latin-type designs, distinct CJK designs, and the kanji worth rendering (most covered first)."""
    alpha_pool = [f for f in faces if len(f.chars & set(ALPHA_REFERENCE)) >= MIN_REFERENCE]
    alpha_faces, alpha_dups = distinct_faces(alpha_pool, ALPHA_REFERENCE, MIN_REFERENCE)
    _log(f"latin-type designs: {len(alpha_faces)} kept, {len(alpha_dups)} duplicates merged", start)

    cjk_pool = [f for f in faces if len(f.chars & set(kanji_pool)) >= N_KANJI_CANDIDATES]
    reference = "".join(list(kana[:N_CJK_REFERENCE_KANA]) + rank_kanji(kanji_pool, cjk_pool)[:N_CJK_REFERENCE_KANJI])
    cjk_faces, cjk_dups = distinct_faces(cjk_pool, reference, MIN_REFERENCE)
    _log(f"CJK designs: {len(cjk_faces)} kept, {len(cjk_dups)} duplicates merged", start)
    return alpha_faces, cjk_faces, rank_kanji(kanji_pool, cjk_faces)[:N_KANJI_CANDIDATES]


def rank_kanji(kanji: Sequence[str], faces: Sequence[Face]) -> list[str]:
    """Kanji by how many faces map them (most first); ties in a fixed hash order, which spreads over radicals."""
    coverage = {ch: sum(ch in f.chars for f in faces) for ch in kanji}
    return sorted(kanji, key=lambda ch: (-coverage[ch], stable_hash(ch, "kanji")))


def select_classes(
    renders: dict[str, dict[str, np.ndarray]], priority: Sequence[str], is_kanji: set[str], start: float
) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """Classes with enough designs that stay distinct from their capital and from every earlier class.

    The case rule is measured before small-caps renders are removed: removing them first
    would hide exactly the collapse the rule measures. Returns the classes and the renders
    without small-caps lowercase.
    """
    designs = {ch: sum(ch in r for r in renders.values()) for ch in priority}
    candidates = [ch for ch in priority if designs[ch] >= MIN_DESIGNS]
    similarity, counts = pair_similarity(renders, candidates)
    lowercase = case_collapsed(candidates, similarity)
    renders, n_small_caps = drop_small_caps(renders, skip=lowercase)
    designs = {ch: sum(ch in r for r in renders.values()) for ch in priority}
    keep = [i for i, ch in enumerate(candidates) if ch not in lowercase and designs[ch] >= MIN_DESIGNS]
    sub = np.ix_(keep, keep)
    accepted = [
        candidates[keep[i]] for i in greedy_distinct(similarity[sub], counts[sub], COLLAPSE_CORR, COLLAPSE_MIN_FACES)
    ]
    look_alikes = "".join(candidates[i] for i in keep if candidates[i] not in accepted)
    _log(f"case rule drops {''.join(sorted(lowercase))}; {n_small_caps} small-caps renders removed", start)
    _log(f"look-alike rule drops {look_alikes}", start)
    kanji = [ch for ch in accepted if ch in is_kanji]
    kanji = set(sorted(kanji, key=lambda ch: (-designs[ch], stable_hash(ch, "kanji")))[:N_KANJI])
    return [ch for ch in accepted if ch not in is_kanji or ch in kanji], renders


def assemble(
    renders: dict[str, dict[str, np.ndarray]], classes: Sequence[str], script_of: dict[str, int]
) -> dict[str, np.ndarray]:
    """The shipped arrays: rows sorted by class (script, code point) then design (face name)."""
    classes = sorted(classes, key=lambda ch: (script_of[ch], ord(ch)))
    chosen = {ch: pick_designs(sorted(f for f in renders if ch in renders[f]), MAX_DESIGNS) for ch in classes}
    face_names = sorted({f for faces in chosen.values() for f in faces})
    face_id = {name: i for i, name in enumerate(face_names)}
    images, labels, image_face = [], [], []
    for cls, ch in enumerate(classes):
        for f in sorted(chosen[ch]):
            images.append(renders[f][ch])
            labels.append(cls)
            image_face.append(face_id[f])
    scripts = [script_of[ch] for ch in classes]
    return {
        "images": np.stack(images).astype(np.uint8),
        "labels": np.asarray(labels, dtype=np.int32),
        "class_chars": np.asarray(classes, dtype="<U1"),
        "class_script": np.asarray(scripts, dtype=np.int16),
        "script_names": np.asarray(SCRIPT_NAMES),
        "class_split": assign_splits(classes, scripts),
        "image_face": np.asarray(image_face, dtype=np.int32),
        "face_names": np.asarray(face_names),
    }


def script_summary(
    renders: dict[str, dict[str, np.ndarray]], classes: Sequence[str], script_of: dict[str, int]
) -> list[str]:
    """Per script: classes kept and distinct designs available per class before the MAX_DESIGNS cap."""
    lines = []
    for script, name in enumerate(SCRIPT_NAMES):
        counts = [sum(ch in r for r in renders.values()) for ch in classes if script_of[ch] == script]
        if counts:
            lines.append(
                f"{name}: {len(counts)} classes, designs available min {min(counts)} "
                f"median {int(np.median(counts))} max {max(counts)}"
            )
    return lines


def build(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Run every stage; returns the arrays written to ``args.out``."""
    start = time.perf_counter()
    names = sorted(set(read_package_list(args.latin_packages)) | set(read_package_list(args.cjk_packages)))
    packages = fetch_packages(names, args.workdir)
    _log(f"{len(packages)} packages fetched and unpacked", start)

    base = base_candidates()
    kanji_pool = jis_level1_kanji()
    faces = [face for pkg in packages for face in list_faces(pkg, frozenset([ch for ch, _ in base] + kanji_pool))]
    _log(f"{len(faces)} faces map a wanted character", start)

    alpha_chars = [ch for ch, script in base if script in ALPHA_SCRIPTS]
    kana_chars = [ch for ch, script in base if script not in ALPHA_SCRIPTS]
    alpha_faces, cjk_faces, kanji = select_designs(faces, kana_chars, kanji_pool, start)
    renders: dict[str, dict[str, np.ndarray]] = {}
    for face in alpha_faces:
        renders.setdefault(face.name, {}).update(render_face(face, alpha_chars))
    for face in cjk_faces:
        renders.setdefault(face.name, {}).update(render_face(face, kana_chars + kanji))
    _log(f"{sum(len(r) for r in renders.values())} renders", start)

    renders, dropped_faces = drop_outliers(renders)
    _log(f"{len(dropped_faces)} faces dropped as not drawing their characters", start)

    script_of = dict(base) | {ch: SCRIPT_NAMES.index("kanji") for ch in kanji}
    classes, renders = select_classes(renders, [ch for ch, _ in base] + kanji, set(kanji), start)
    arrays = assemble(renders, classes, script_of)
    for line in script_summary(renders, classes, script_of):
        _log(line, start)
    write_npz(args.out, arrays)
    _log(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(classes)} classes, "
        f"{len(arrays['images'])} images)",
        start,
    )

    used: dict[str, int] = {}
    for name in arrays["face_names"].tolist():
        used[name.split("/", 1)[0]] = used.get(name.split("/", 1)[0], 0) + 1
    notice = args.notice or args.out.parent / "NOTICE.md"
    notice.write_text(notice_text(packages, used))
    label_faces = [f for key in ("NotoSansCJK-Regular", "DejaVuSans.ttf") for f in faces if key in f.name]
    chars = arrays["class_chars"].tolist()
    contact_sheet(arrays["images"], arrays["labels"], chars, arrays["class_script"].tolist(), label_faces, args.sheet)
    _log(f"wrote {notice} and {args.sheet}", start)
    return arrays


def main(argv: list[str] | None = None) -> int:
    """``mela data build-glyphs``: rebuild ``glyphs.npz``, its NOTICE and the contact sheet."""
    build(_parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
