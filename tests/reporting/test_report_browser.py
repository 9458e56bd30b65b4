"""report.html with a learn_labeler gallery, opened in a real browser (headless Chromium): every image decodes,
no console error, the doubtful list's links land on their classes, the full list's pages open.

Needs Debian's ``chromium``; `.ci/run` installs it, so under CI (``CI`` set) a missing browser fails the test
instead of skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mela.methods.doubt import class_doubt, truth_flags
from mela.reporting.gallery import build_gallery, save_gallery
from mela.reporting.report import write_report

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
if BROWSER is None and os.environ.get("CI"):
    raise RuntimeError("CI is set but chromium is missing: .ci/run installs it (apt-get install -y chromium)")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (apt-get install -y chromium)")

# Injected first into <head>: records resource and script errors, then on load checks every image and link.
PROBE = """<script>
var probeErrors = [];
window.addEventListener("error", function (e) {
  probeErrors.push(e.target && e.target.tagName ? "resource " + e.target.tagName : "script " + e.message);
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var links = Array.prototype.slice.call(document.querySelectorAll('a[href^="#"], area[href^="#"]'));
  var dead = links.filter(function (a) { return !document.getElementById(a.getAttribute("href").slice(1)); });
  var first = document.querySelector("ol.doubtful a"), landed = null;
  if (first) {
    first.click();
    var target = document.getElementById(first.getAttribute("href").slice(1));
    landed = target !== null && location.hash === first.getAttribute("href") &&
      Math.abs(target.getBoundingClientRect().top) < 2;
  }
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length, broken: broken.map(function (i) { return i.alt; }), links: links.length,
    dead: dead.map(function (a) { return a.getAttribute("href"); }), doubtful: document.querySelectorAll(
      "ol.doubtful a").length, landed: landed, errors: probeErrors}));
});
</script>"""


def open_in_browser(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load a copy of ``page`` with the probe in headless Chromium; the probe's findings and console lines."""
    probed = page.with_name(f"probed-{page.name}")
    probed.write_text(page.read_text(encoding="utf-8").replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=10000", "--dump-dom", probed.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, f"the page did not finish loading: {done.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return probe, console


def images(kind: int, k: int) -> np.ndarray:
    """Grey 28 px, colour 224 px, grey 84 px and colour 32 px images, patterned by ``k``."""
    size, channels = [(28, 1), (224, 3), (84, 1), (32, 3)][kind]
    rng = np.random.default_rng(k)
    return rng.integers(0, 256, (size, size, channels), dtype=np.uint8)


def labeler_run(root: Path) -> Path:
    """A learn_labeler run folder holding a gallery of 60 classes (some mixed, some split), the images of
    four kinds."""
    rng = np.random.default_rng(0)
    true = np.concatenate([rng.permutation(60) for _ in range(4)])
    keys = rng.normal(size=(60, 16))[true] * 3 + rng.normal(size=(240, 16)) * 0.25
    labels = true.copy()
    labels[:5] = (labels[:5] + 1) % 60  # a few keys in the wrong class
    labels[(true == 7) & (np.arange(240) >= 120)] = 60  # class 7 split
    offsets = np.arange(0, 241, 4)
    doubt = class_doubt(keys, labels, offsets, 1.0, 16.0)
    names = [f"g{v}" for v in doubt.labels]
    members = [[] for _ in names]
    for k, p in enumerate(doubt.member_class.tolist()):
        members[p].append((f"task {k // 4}", f"local <{k % 4}> & co", float(doubt.member_distance[k]), k))
    gallery = build_gallery(names, members, doubt, lambda k: images(k % 4, k), truth_flags(doubt.member_class,
                                                                                          true, len(names)))
    run = root / "checkpoint" / "label_learn" / "saves" / "learn_labeler" / "demo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("gallery_top: 10\ndataset: glyphs\n")
    save_gallery(run, gallery)
    return run


def test_the_report_gallery_renders_in_a_real_browser(tmp_path) -> None:
    run = labeler_run(tmp_path / "ws")
    _, html_path = write_report([run], tmp_path / "out")
    probe, console = open_in_browser(html_path, tmp_path)
    assert probe["images"] >= 10 and probe["broken"] == [], probe
    assert probe["doubtful"] == 10 and probe["landed"] is True, probe
    assert probe["links"] > 10 and probe["dead"] == [], probe
    assert probe["errors"] == [] and console == [], (probe, console)
    page = html_path.read_text()
    assert "local &lt;0&gt; &amp; co" in page  # task and local names in the alt and hover text, escaped

    pages = sorted((tmp_path / "out" / "report_gallery").glob("*.html"))
    assert pages and all(f'href="{p.relative_to(tmp_path / "out").as_posix()}"' in page for p in pages)
    probe, console = open_in_browser(pages[0], tmp_path)
    assert probe["images"] == 61 and probe["broken"] == [] and probe["errors"] == [] and console == [], probe
