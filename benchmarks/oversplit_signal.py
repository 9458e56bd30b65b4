"""The labeler's over-split check against the truth, on piles that vary the way real task collections vary.

Families of piles (each pile runs in both labeler modes, as learn_labeler runs them, count check included):

- ``collections`` (the family the rule is tuned on, like the held-out collection of issue 25): Gaussian classes
  (16-d power-law, 64-d flat or 256-d low-rank within-class spread; separations 2 / 1 / 0.6; equal or
  log-normal class spreads), class recurrence heavy-tailed (Zipf, mean 4 or 8, many classes seen once, none
  over 8 times the mean), tasks of 3-8 or 3-20 ways, keys of 1 to 5 images or of one;
- ``uniform`` (held out): the same geometry, every class recurring 3 or 6 times in 5-way tasks, keys of 1 or
  5 images (the labeler sweep's kind of pile);
- ``multimodal`` (held out): classes made of 2 or 3 sub-modes (0.3-0.5 of the class separation apart; a
  local class comes from one sub-mode), class spreads log-normal (0.5 or 0.8), 10- or 20-way tasks;
- ``glyphs`` (held out, real features): convnet4 features of the built-in glyphs (``--glyph-epochs``: an
  untrained network, one trained 1 epoch and one trained 3 epochs, learn_meta_repr without augmentation),
  uniform or heavy-tailed recurrence 2 / 4 / 8 (no image in two keys, so a class recurs at most 8 times with
  5-image keys), 5-way or 3-8-way tasks, keys of 1 or 5 images.

K is 0.75 or 1.5 times the number of classes (a multiple of the ways for reference mode with fixed ways; a
reference run that fails, e.g. pruning below the widest task, is recorded as an error and left out). Truth: a
true class is split when it is the majority class of two or more clusters; the true split share is over the
true classes that are the majority of some cluster (what a label-free count can see). Writes
benchmarks/results/oversplit_signal.{json,md}.

    python benchmarks/oversplit_signal.py --glyph-epochs 0 1 3

trains convnet4 on the glyphs for each number of epochs (0: untrained, seed 0; about 15 s an epoch on 2 CPU
cores) and caches the train split's features in --cache (``glyphs_dark_e<epochs>.npz``: ``features`` (N, d),
``labels`` (N,)).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from mela.errors import MelaError
from mela.methods.global_labels import infer_global_labels
from mela.methods.labeler import LabelerConfig, RaggedFeatures, clustering_report
from mela.methods.labeler.constants import MAX_OVERSPLIT_SHARE, MIN_OVERSPLIT_GROUPS, OVERSPLIT_ALPHA
from mela.methods.labeler.oversplit import oversplit_check

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
SHARES = (0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.15)
GEOMETRIES = ((16, "power"), (64, "flat"), (256, "lowrank"))
# A heavy-tailed class recurs at most this many times the mean recurrence.
ZIPF_CAP = 8
FAMILIES = ("collections", "uniform", "multimodal", "glyphs")
TUNING = "collections"


@dataclass(frozen=True)
class Pile:
    """One pile's recipe: features (a Gaussian geometry or glyph features), tasks, keys, and the labeler's K."""

    family: str
    features: str = "gaussian"  # or glyphs:<name>
    dim: int = 64
    profile: str = "flat"
    classes: int = 200
    separation: float = 1.0
    size_sigma: float = 0.0
    modes: int = 1
    mode_separation: float = 0.0
    recurrence: float = 4.0
    tail: str = "uniform"
    ways: tuple[int, int] = (5, 5)
    images: tuple[int, int] = (5, 5)
    k_factor: float = 1.0


def sample_piles(family: str, count: int, seed: int, glyphs: list[str]) -> list[Pile]:
    """``count`` random recipes of one family."""
    rng = np.random.default_rng(seed)

    def pick(options):
        return options[int(rng.integers(len(options)))]

    out = []
    for _ in range(count):
        dim, profile = pick(GEOMETRIES)
        base = Pile(family, dim=dim, profile=profile, separation=pick((2.0, 1.0, 0.6)), k_factor=pick((0.75, 1.5)))
        if family == "uniform":
            pile = replace(base, size_sigma=pick((0.0, 0.5)), recurrence=pick((3.0, 6.0)),
                           images=pick(((1, 1), (5, 5))))
        elif family == "collections":
            pile = replace(base, classes=250, size_sigma=pick((0.0, 0.5)), recurrence=pick((4.0, 8.0)), tail="zipf",
                           ways=pick(((3, 8), (3, 20))), images=pick(((1, 5), (1, 1))))
        elif family == "multimodal":
            pile = replace(base, classes=150, size_sigma=pick((0.5, 0.8)), modes=pick((2, 3)),
                           mode_separation=pick((0.3, 0.5)), recurrence=pick((4.0, 8.0)),
                           ways=pick(((10, 10), (20, 20))), images=pick(((1, 1), (5, 5))))
        else:
            pile = replace(base, features=f"glyphs:{pick(glyphs)}", dim=0, profile="-", separation=0.0,
                           recurrence=pick((2.0, 4.0, 8.0)), tail=pick(("uniform", "zipf")),
                           ways=pick(((5, 5), (3, 8))), images=pick(((1, 1), (5, 5))))
        out.append(pile)
    return out


def task_classes(rng: np.random.Generator, n_classes: int, recurrence: float, tail: str, ways: tuple[int, int],
                 most: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(keys,) true class of each task class and (T,) ways: each class recurs ``recurrence`` times (``zipf``:
    in proportion to 1 / rank, at least once and at most ``ZIPF_CAP`` times the mean), at most ``most`` times;
    tasks of ``ways`` classes drawn in proportion to what is left."""
    if tail == "uniform":
        counts = np.full(n_classes, round(recurrence))
    else:
        weight = 1.0 / np.arange(1, n_classes + 1)
        counts = np.clip(np.round(weight / weight.mean() * recurrence), 1, round(ZIPF_CAP * recurrence))
        counts = rng.permutation(counts.astype(np.int64))
    if most is not None:
        counts = np.minimum(counts, most)
    remaining = counts.copy()
    classes, widths = [], []
    while True:
        available = np.flatnonzero(remaining > 0)
        width = min(int(rng.integers(ways[0], ways[1] + 1)), len(available))
        if width < 2:
            break
        chosen = rng.choice(available, width, replace=False, p=remaining[available] / remaining[available].sum())
        remaining[chosen] -= 1
        classes.append(chosen)
        widths.append(width)
    return np.concatenate(classes), np.array(widths)


def build_pile(pile: Pile, seed: int, glyph_sets: dict[str, tuple[np.ndarray, np.ndarray]]
               ) -> tuple[RaggedFeatures, np.ndarray]:
    """The pile's item features and the true class of each task class."""
    rng = np.random.default_rng(seed)
    if pile.features.startswith("glyphs:"):
        features, labels = glyph_sets[pile.features.split(":", 1)[1]]
        names = np.unique(labels)
        pools = [rng.permutation(np.flatnonzero(labels == c)) for c in names]
        # No image in two keys: a class recurs at most (its images // the largest key) times.
        most = min(len(pool) for pool in pools) // pile.images[1]
        true, widths = task_classes(rng, len(names), pile.recurrence, pile.tail, pile.ways, most)
        sizes = rng.integers(pile.images[0], pile.images[1] + 1, len(true))
        used = np.zeros(len(names), dtype=np.int64)
        rows = []
        for c, m in zip(true.tolist(), sizes.tolist(), strict=True):
            rows.append(pools[c][used[c] : used[c] + m])
            used[c] += m
        rows = np.concatenate(rows)
        items = features[rows].astype(np.float64)
    else:
        d, n = pile.dim, pile.classes
        k = np.arange(1, d + 1)
        eig = {"flat": np.ones(d), "power": 1.0 / k, "lowrank": np.exp(-k / 12.0)}[pile.profile]
        eig = eig / eig.sum()  # two images of one class are sqrt(2) apart on average
        scale = np.exp(pile.size_sigma * rng.normal(size=n))
        scale /= np.sqrt((scale**2).mean())
        means = pile.separation * rng.normal(size=(n, d)) / np.sqrt(d)
        offsets = pile.mode_separation * pile.separation * rng.normal(size=(n, pile.modes, d)) / np.sqrt(d)
        true, widths = task_classes(rng, n, pile.recurrence, pile.tail, pile.ways)
        sizes = rng.integers(pile.images[0], pile.images[1] + 1, len(true))
        mode = rng.integers(0, pile.modes, len(true))  # one sub-mode per local class
        cls = np.repeat(true, sizes)
        items = (means[cls] + offsets[cls, np.repeat(mode, sizes)]
                 + rng.normal(size=(int(sizes.sum()), d)) * np.sqrt(eig) * scale[cls, None])
    return RaggedFeatures(items, np.r_[0, np.cumsum(sizes)], np.r_[0, np.cumsum(widths)]), true


def glyph_features(epochs: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features of the glyph train split from convnet4 meta-trained ``epochs`` epochs (learn_meta_repr, no
    augmentation), and the labels; cached."""
    path = cache / f"glyphs_dark_e{epochs}.npz"
    if not path.is_file():
        import torch

        import mela
        from mela.data.glyphs import MEAN, STD
        from mela.data.glyphs import load as load_glyphs
        from mela.methods.evaluator import extract_features

        torch.manual_seed(0)
        model = mela.create_model("convnet4", in_channels=1)
        if epochs:
            model = mela.meta_train(model, "glyphs", epochs=epochs, data_aug=False, val_tasks=50, log=None).model
        train = load_glyphs(Path("."), "train")
        features = extract_features(model, train.images, MEAN, STD, torch.device("cpu")).numpy()
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=features, labels=train.labels)
    with np.load(path) as z:
        return z["features"], z["labels"]


def split_truth(assigned: np.ndarray, true: np.ndarray) -> dict:
    """True classes that are the majority of two or more clusters, over those that are the majority of one."""
    flat = np.asarray(assigned).reshape(-1)
    kept = flat >= 0
    _, cluster = np.unique(flat[kept], return_inverse=True)
    _, klass = np.unique(true, return_inverse=True)
    table = np.zeros((cluster.max() + 1, klass.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster, klass[kept]), 1)
    holders = np.bincount(table.argmax(axis=1), minlength=table.shape[1])
    found, split = int((holders >= 1).sum()), int((holders >= 2).sum())
    return {"true_split": split, "true_classes_found": found, "true_split_share": split / max(found, 1)}


def run_pile(pile: Pile, mode: str, seed: int, glyph_sets: dict) -> dict:
    features, true = build_pile(pile, seed, glyph_sets)
    n_true = len(np.unique(true))
    K = max(round(pile.k_factor * n_true), pile.ways[1])
    if mode == "reference" and pile.ways[0] == pile.ways[1]:
        K = pile.ways[0] * max(1, round(K / pile.ways[0]))
    row = {"pile": asdict(pile), "mode": mode, "seed": seed, "K": K, "true_classes": n_true,
           "tasks": int(features.n_tasks), "keys": int(features.n_classes)}
    start = time.perf_counter()
    try:
        labels = infer_global_labels(features, LabelerConfig(K=K, mode=mode))
    except MelaError as exc:
        return {**row, "error": str(exc)}
    row["seconds"] = time.perf_counter() - start
    report = clustering_report(labels.assigned, true, labels.task_offsets)
    row.update(ari=report["ari"], clusters=report["clusters"], tasks_kept=report["tasks_kept"],
               **split_truth(labels.assigned, true))
    diagnostics = labels.diagnostics
    row["oversplit"] = diagnostics.get("oversplit")
    row["warning"] = diagnostics.get("warning")
    row["other_warning"] = _other_warning(diagnostics)
    keys = features.keys()
    start = time.perf_counter()
    row["grid"] = {}
    for a in ALPHAS:
        check = oversplit_check(keys, labels.assigned, alpha=a)
        row["grid"][str(a)] = {"share": check["split_share"], "groups": check["looks_split"]}
    row["check_seconds"] = (time.perf_counter() - start) / len(ALPHAS)
    return row


def _other_warning(diagnostics: dict) -> bool:
    """Whether the warnings other than the over-split check's fire (the distance, cannot-link and count checks)."""
    from mela.methods.global_labels import count_warnings
    from mela.methods.labeler import reliability_warning

    check = diagnostics.get("count_check")
    return bool(reliability_warning(diagnostics) or (check and count_warnings(check)))


def firing(rows: list[dict], alpha: float, share: float) -> tuple[np.ndarray, np.ndarray]:
    """The estimated split share at ``alpha`` and whether the warning's rule fires (share above ``share``, at
    least ``MIN_OVERSPLIT_GROUPS`` groups), per pile."""
    est = np.array([r["grid"][str(alpha)]["share"] for r in rows])
    groups = np.array([r["grid"][str(alpha)]["groups"] for r in rows])
    return est, (est > share) & (groups >= MIN_OVERSPLIT_GROUPS)


def rates(rows: list[dict], alpha: float, share: float) -> dict:
    """Hit rates of the warning's rule on ``rows`` (piles that ran): [fired, piles] pairs."""
    est, fires = firing(rows, alpha, share)
    ari = np.array([r["ari"] for r in rows])
    truth = np.array([r["true_split_share"] for r in rows])
    other = np.array([r["other_warning"] for r in rows], dtype=bool)

    def rate(mask: np.ndarray, fired: np.ndarray = fires) -> list:
        return [int(fired[mask].sum()), int(mask.sum())]

    def corr(mask: np.ndarray) -> float | None:
        ok = mask.sum() > 2 and est[mask].std() > 0 and truth[mask].std() > 0
        return float(np.corrcoef(est[mask], truth[mask])[0, 1]) if ok else None

    everything = np.ones(len(rows), dtype=bool)
    return {
        "piles": len(rows),
        "fires_ari_below_0.8": rate(ari < 0.8), "fires_ari_above_0.9": rate(ari > 0.9),
        "fires_split_at_least_0.1": rate(truth >= 0.1), "fires_split_below_0.05": rate(truth < 0.05),
        "fires_split_below_0.03": rate(truth < 0.03),
        # Where no other warning fires: the piles this check is for.
        "fires_split_at_least_0.1_no_other_warning": rate((truth >= 0.1) & ~other),
        "fires_split_below_0.05_no_other_warning": rate((truth < 0.05) & ~other),
        "fires_ari_below_0.8_no_other_warning": rate((ari < 0.8) & ~other),
        "other_warning_ari_below_0.8": rate(ari < 0.8, other),
        "any_warning_ari_below_0.8": rate(ari < 0.8, fires | other),
        "any_warning_ari_above_0.9": rate(ari > 0.9, fires | other),
        "share_correlation": corr(everything), "share_correlation_no_other_warning": corr(~other),
        "mean_estimated_share": float(est.mean()), "mean_true_share": float(truth.mean()),
    }


def youden(rows: list[dict], alpha: float, share: float) -> float:
    """J = P(fires | true split share >= 0.1) - P(fires | true split share < 0.05) (0 for an empty side)."""
    truth = np.array([r["true_split_share"] for r in rows])
    _, fires = firing(rows, alpha, share)
    split, clean = truth >= 0.1, truth < 0.05
    return (float(fires[split].mean()) if split.any() else 0.0) - (float(fires[clean].mean()) if clean.any() else 0.0)


def tune(rows: list[dict], by_family: dict[str, list[dict]]) -> dict:
    """The warning's share threshold: the one with the largest J (:func:`youden`) on the tuning family ``rows``,
    alpha fixed at ``OVERSPLIT_ALPHA`` (ties: the larger share). For each other alpha too (its own best share),
    with the J that rule gets on every family: how much alpha matters."""
    out = {}
    for alpha in ALPHAS:
        js = {share: youden(rows, alpha, share) for share in SHARES}
        share = max(SHARES, key=lambda x: (round(js[x], 9), x))
        out[str(alpha)] = {"share": share, "J_by_share": js,
                           "J": {f: youden(g, alpha, share) for f, g in by_family.items()}}
    return {"alpha": OVERSPLIT_ALPHA, "share": out[str(OVERSPLIT_ALPHA)]["share"], "by_alpha": out}


def _frac(pair: list) -> float:
    return pair[0] / pair[1] if pair[1] else 0.0


def markdown(rows: list[dict], tuned: dict, alpha: float, share: float) -> str:
    by_alpha = tuned["by_alpha"]
    lines = [f"Rule (the defaults): warn when `split_share > {share}` and at least {MIN_OVERSPLIT_GROUPS} groups look "
             f"split, a class looking split at `chance <= {alpha}`. Tuned on `{TUNING}` with alpha fixed at "
             f"{tuned['alpha']}: share {tuned['share']} maximises J = P(fires | true split share >= 10 %) - "
             f"P(fires | true split share < 5 %) there (J by share: "
             + ", ".join(f"{k}: {v:.2f}" for k, v in by_alpha[str(tuned["alpha"])]["J_by_share"].items()) + ").",
             "",
             "| family | mode | piles | fires, ARI < 0.8 | fires, ARI > 0.9 | fires, split >= 10 % | "
             "fires, split < 5 % | no other warning: fires, split >= 10 % / < 5 % | "
             "no other warning: fires, ARI < 0.8 | "
             "any warning, ARI < 0.8 (others alone) | any warning, ARI > 0.9 | share corr. (no other warning) | "
             "mean est. / true share |",
             "|" + "---|" * 13]

    def cell(pair: list) -> str:
        return f"{pair[0]}/{pair[1]}" + (f" ({100 * pair[0] / pair[1]:.0f} %)" if pair[1] else "")

    def number(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    for family in FAMILIES:
        for mode in ("improved", "reference", "both"):
            group = [r for r in rows if r["pile"]["family"] == family and (mode == "both" or r["mode"] == mode)]
            if not group:
                continue
            r = rates(group, alpha, share)
            lines.append(
                f"| {family}{' (tuning)' if family == TUNING else ''} | {mode} | {r['piles']} | "
                f"{cell(r['fires_ari_below_0.8'])} | {cell(r['fires_ari_above_0.9'])} | "
                f"{cell(r['fires_split_at_least_0.1'])} | {cell(r['fires_split_below_0.05'])} | "
                f"{cell(r['fires_split_at_least_0.1_no_other_warning'])} / "
                f"{cell(r['fires_split_below_0.05_no_other_warning'])} | "
                f"{cell(r['fires_ari_below_0.8_no_other_warning'])} | {cell(r['any_warning_ari_below_0.8'])} "
                f"({r['other_warning_ari_below_0.8'][0]}) | {cell(r['any_warning_ari_above_0.9'])} | "
                f"{number(r['share_correlation'])} ({number(r['share_correlation_no_other_warning'])}) | "
                f"{r['mean_estimated_share']:.3f} / {r['mean_true_share']:.3f} |")
    families = list(next(iter(by_alpha.values()))["J"])
    lines += ["", f"Other alphas, each with the share that maximises J on `{TUNING}`, and the J of that rule on every "
              "family:", "", "| alpha | share | " + " | ".join(f"J {f}" for f in families) + " |",
              "|" + "---|" * (2 + len(families))]
    for a, t in by_alpha.items():
        lines.append(f"| {a} | {t['share']} | " + " | ".join(f"{t['J'][f]:.2f}" for f in families) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piles", type=int, default=64, help="recipes per family (each runs in both modes)")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--glyph-epochs", nargs="*", type=int, default=[],
                        help="glyph features from convnet4 trained this many epochs (0: untrained)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mela-oversplit"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="oversplit_signal")
    parser.add_argument("--summarise", action="store_true", help="only rewrite the .md from the existing .json")
    args = parser.parse_args()
    path = RESULTS / f"{args.out}.json"
    if args.summarise:
        rows = json.loads(path.read_text())["rows"]
    else:
        glyph_sets = {f"epoch{e}": glyph_features(e, args.cache) for e in args.glyph_epochs}
        families = [f for f in args.families if f != "glyphs" or glyph_sets]
        rows = []
        for f_index, family in enumerate(families):
            for i, pile in enumerate(sample_piles(family, args.piles, args.seed + 1000 * f_index, sorted(glyph_sets))):
                for mode in ("improved", "reference"):
                    row = run_pile(pile, mode, args.seed + i, glyph_sets)
                    rows.append(row)
                    if "error" in row:
                        print(f"{family} {i} {mode}: {row['error']}", flush=True)
                        continue
                    print(f"{family} {i} {mode}: ARI {row['ari']:.3f} clusters {row['clusters']}/{row['true_classes']} "
                          f"split {row['true_split_share']:.3f} est {row['oversplit']['split_share']:.3f} "
                          f"{row['seconds']:.1f}s", flush=True)
    ran = [r for r in rows if "error" not in r]
    by_family = {f: [r for r in ran if r["pile"]["family"] == f] for f in FAMILIES}
    by_family = {f: g for f, g in by_family.items() if g}
    tuned = tune(by_family.get(TUNING, []), by_family)
    summary = {"tuned": tuned, "alpha": OVERSPLIT_ALPHA, "max_share": MAX_OVERSPLIT_SHARE,
               "errors": {f: sum("error" in r and r["pile"]["family"] == f for r in rows) for f in FAMILIES},
               "families": {f: rates([r for r in ran if r["pile"]["family"] == f], OVERSPLIT_ALPHA, MAX_OVERSPLIT_SHARE)
                            for f in FAMILIES if any(r["pile"]["family"] == f for r in ran)}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, **summary}, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(ran, tuned, OVERSPLIT_ALPHA, MAX_OVERSPLIT_SHARE))
    print(json.dumps({k: v for k, v in summary.items() if k != "tuned"}, indent=1))
    print((RESULTS / f"{args.out}.md").read_text())


if __name__ == "__main__":
    main()
