"""The config files' comments and ``docs/settings.md``, from the settings registry (``mela.config.settings``).

    python tools/settings_doc.py           # rewrite the comments of src/mela/conf/*.yaml and docs/settings.md
    python tools/settings_doc.py --check   # list what is out of date (exit 1), change nothing

Every top-level key line of a shipped config gets its registry doc as its trailing comment (values, order,
comment lines of their own and nested blocks are kept as they are). ``docs/settings.md`` is the reference: a table
per step and one for the pipelines, with each key's type, default(s), doc, whether it defines the result and
whether it is kept only for the original scripts. ``tests/config/test_settings_registry.py`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from mela.config.settings import PIPELINE, SETTINGS, STEP_NAMES, settings_of

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "mela" / "conf"
DOC = ROOT / "docs" / "settings.md"
COLUMN = 30  # where the comments start (when the key and value leave room)
_KEY_LINE = re.compile(r"^(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")


def config_paths() -> list[Path]:
    return sorted(CONF.glob("*.yaml"))


def _split_comment(rest: str) -> tuple[str, str | None]:
    """``' 5   # doc'`` -> (``'5'``, ``'doc'``): the value text and the comment (None without one), quotes respected."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1].isspace()):
            return rest[:i].strip(), rest[i + 1:].strip()
    return rest.strip(), None


def key_lines(text: str) -> list[tuple[str, str, str | None]]:
    """(key, value text, comment) of every top-level key of a config file, less Hydra's ``hydra`` and ``defaults``."""
    out = []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match and match["key"] not in ("hydra", "defaults"):
            value, comment = _split_comment(match["rest"])
            out.append((match["key"], value, comment))
    return out


def with_comments(name: str, text: str) -> str:
    """Config ``name``'s ``text`` with every top-level key commented with its registry doc.

    An indented comment line right after a commented key line (a continuation of its comment) is dropped;
    a key the registry does not know keeps its line (the test reports it).
    """
    out: list[str] = []
    in_hydra = False
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            in_hydra = match["key"] in ("hydra", "defaults")
        if match and not in_hydra and match["key"] in SETTINGS:
            value, _ = _split_comment(match["rest"])
            head = f"{match['key']}:" + (f" {value}" if value else "")
            out.append(f"{head:<{COLUMN - 2}}  # {SETTINGS[match['key']].doc_for(name)}")
            continue
        continuation = line.lstrip().startswith("#") and line.startswith(" ") and out and "  # " in out[-1]
        if continuation and not in_hydra:
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    """Markdown table cell text: pipes, angle brackets and stars escaped."""
    return re.sub(r"([|<>*])", r"\\\1", text)


def _default(value: object) -> str:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {_default(v).strip('`')}" for k, v in value.items()) + "}"
    else:
        text = str(value)
    return f"`{text}`"


def _defaults(name: str) -> dict:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return {key: cfg[key] for key in cfg if key not in ("hydra", "defaults")}


def markdown() -> str:
    """The text of ``docs/settings.md``."""
    pipelines = sorted(p.stem for p in config_paths() if p.stem.startswith(PIPELINE))
    lines = [
        "# Settings",
        "",
        "Every setting of the steps and the pipelines, generated from the settings registry",
        "(`src/mela/config/settings.py`) by `python tools/settings_doc.py`; do not edit it by hand (a test checks",
        "that it is current). Set any of them on the command line as `key=value`, e.g.",
        "`mela learn-meta-repr n_shots=1`; `mela <step> --help` lists them with their defaults.",
        "",
        "- **defines result**: a run reopened (same `run_name`) with another value is refused, since its files hold",
        "  what the old value computed; the others (device, logging, output) may change on a rerun. `epochs` may",
        "  grow: training resumes at the last epoch.",
        "- **compat**: accepted only so the original research scripts' command lines keep working; it has no",
        "  effect in that step, never blocks a resume, and warns when set to a value other than its default.",
        "- The pipeline hands its shared keys to every step that has them (not where they are compat):",
        "  `n_ways` also sets the steps' `val_n_ways`, `model` sets learn_labeler's `label_recovery_model` and",
        "  `train_model`, `val_db_size` sets the training steps' `test_db_size` (validation tasks) and `test_db_size`",
        "  meta_eval's (test tasks); a step's section (`learn_labeler.K=800`) sets any key of that step.",
        "",
    ]
    for step in STEP_NAMES:
        defaults = _defaults(step)
        lines += [f"## {step}", "", "| key | type | default | doc | defines result | compat |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key in defaults:
            s = SETTINGS[key]
            lines.append(f"| `{key}` | {_cell(s.type)} | {_default(defaults[key])} | {_cell(s.doc_for(step))} | "
                         f"{'yes' if s.defines(step) else 'no'} | {'compat' if s.is_compat(step) else ''} |")
        lines.append("")
    all_defaults = {name: _defaults(name) for name in pipelines}
    lines += [f"## {PIPELINE}", "", f"The configs {', '.join(f'`{n}`' for n in pipelines)} (`--config-name`).", "",
              "| key | type | " + " | ".join(pipelines) + " | doc | defines result |",
              "| --- | --- | " + " | ".join("---" for _ in pipelines) + " | --- | --- |"]
    for s in settings_of(PIPELINE):
        cells = " | ".join(_default(all_defaults[n][s.name]) if s.name in all_defaults[n] else "" for n in pipelines)
        lines.append(f"| `{s.name}` | {_cell(s.type)} | {cells} | {_cell(s.doc_for(PIPELINE))} | "
                     f"{'yes' if s.defines(PIPELINE) else 'no'} |")
    return "\n".join(lines) + "\n"


def stale() -> list[str]:
    """What ``--check`` reports: config files whose comments and ``docs/settings.md`` if it is out of date."""
    out = [str(p.relative_to(ROOT)) for p in config_paths() if with_comments(p.stem, p.read_text()) != p.read_text()]
    if not DOC.is_file() or DOC.read_text() != markdown():
        out.append(str(DOC.relative_to(ROOT)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list the out-of-date files (exit 1), change nothing")
    args = parser.parse_args(argv)
    if args.check:
        out = stale()
        for path in out:
            print(f"out of date: {path} (python tools/settings_doc.py rewrites it)")
        return 1 if out else 0
    for path in config_paths():
        text = path.read_text()
        if with_comments(path.stem, text) != text:
            path.write_text(with_comments(path.stem, text))
            print(path.relative_to(ROOT))
    if not DOC.is_file() or DOC.read_text() != markdown():
        DOC.write_text(markdown())
        print(DOC.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
