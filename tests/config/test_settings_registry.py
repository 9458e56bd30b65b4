"""The settings registry (``mela.config.settings``) against what ships: every config key described once and read,
the YAML comments, docs/settings.md, --help, the pipeline's shared keys, the resume check and the compat keys."""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mela.cli import main
from mela.config import compose_config, compose_pipeline_step, config_names, default_config, readers
from mela.config.settings import (
    PIPELINE,
    SETTINGS,
    STEP_NAMES,
    CompatWarning,
    compat_keys,
    free_keys,
    pipeline_feeds,
    settings_of,
)
from mela.errors import MelaError
from mela.runs.store import check_reuse, differing_settings

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mela_settings_doc", ROOT / "tools" / "settings_doc.py")
settings_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(settings_doc)

CONFIGS = config_names()


@pytest.mark.parametrize("config", CONFIGS)
def test_every_key_of_a_shipped_config_is_in_the_registry_and_every_registry_key_of_it_is_in_the_file(config):
    in_file = set(default_config(config))
    registered = {s.name for s in settings_of(config)}
    assert not in_file - set(SETTINGS), f"{config}.yaml keys missing from the settings registry"
    assert not in_file - registered, f"{config}.yaml keys whose registry entry does not list {config}"
    assert not registered - in_file, f"registry keys of {config} missing from {config}.yaml"


def test_the_shipped_configs_are_the_five_steps_and_the_pipelines():
    assert {c for c in CONFIGS if not c.startswith(PIPELINE)} == set(STEP_NAMES)


def test_every_doc_is_one_line_and_every_compat_doc_says_so():
    for s in SETTINGS.values():
        for config in [*STEP_NAMES, PIPELINE]:
            doc = s.doc_for(config)
            assert doc and "\n" not in doc and len(doc) <= 110, (s.name, config)
            if config in s.steps and s.is_compat(config):
                assert doc.startswith("accepted for compatibility: "), (s.name, config)


def test_the_config_comments_and_docs_settings_md_are_generated_from_the_registry():
    assert settings_doc.stale() == [], "run: python tools/settings_doc.py"
    for path in settings_doc.config_paths():
        for key, _, comment in settings_doc.key_lines(path.read_text()):
            assert comment == SETTINGS[key].doc_for(path.stem), (path.name, key)


def test_the_comment_writer_keeps_values_and_order_and_replaces_disagreeing_comments():
    text = ('# header\nhydra:\n  run:\n    dir: .\ntrial: "3"   # old\n# a section\nn_ways: 5\nlam: 0.001  # x\n'
            '                # continued\nlearn_labeler:\n  K: 40    # kept: nested\n')
    out = settings_doc.with_comments(PIPELINE, text)
    assert OmegaConf.create(out) == OmegaConf.create(text)
    assert out.splitlines() == [
        "# header", "hydra:", "  run:", "    dir: .",
        f'trial: "3"                    # {SETTINGS["trial"].doc}', "# a section",
        f"n_ways: 5                     # {SETTINGS['n_ways'].doc_for(PIPELINE)}",
        f"lam: 0.001                    # {SETTINGS['lam'].doc}",
        f"learn_labeler:                # {SETTINGS['learn_labeler'].doc}", "  K: 40    # kept: nested"]


class Recording:
    """A config that records the keys read from it (attribute, item, ``get``)."""

    def __init__(self, cfg, seen: set[str]) -> None:
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, key):
        self._seen.add(key)
        return getattr(self._cfg, key)

    def __getitem__(self, key):
        self._seen.add(key)
        return self._cfg[key]

    def get(self, key, default=None):
        self._seen.add(key)
        return self._cfg.get(key, default)

    def __contains__(self, key) -> bool:
        return key in self._cfg


@pytest.mark.parametrize("config", [*STEP_NAMES, PIPELINE])
def test_every_key_a_step_does_not_keep_for_compatibility_is_read_by_its_read_settings(config, monkeypatch):
    unwrap = readers.record
    monkeypatch.setattr(readers, "record", lambda cfg: unwrap(cfg._cfg if isinstance(cfg, Recording) else cfg))
    cfg, seen = compose_config(config), set()
    importlib.import_module(f"mela.steps.{config}").read_settings(Recording(cfg, seen))
    assert not set(cfg) - seen - compat_keys(config), "keys nothing reads: read them, or mark them compat"


def test_the_pipeline_hands_each_step_the_registry_feeds_and_never_a_compat_key():
    cfg = compose_config("pipeline", ["n_ways=3", "n_shots=2", "val_db_size=7", "test_db_size=9", "progress=true"])
    labeler = compose_pipeline_step(cfg, "learn_labeler", "r")
    assert (labeler.n_ways, labeler.val_n_ways, labeler.n_shots, labeler.test_db_size) == (3, 3, 2, 7)
    assert (labeler.label_recovery_model, labeler.train_model) == ("convnet4", "convnet4")
    oracle = compose_pipeline_step(cfg, "sup_baseline", "r")
    assert (oracle.val_n_ways, oracle.test_db_size, oracle.n_ways, oracle.n_shots) == (3, 7, 5, 5)  # compat: kept
    evaluation = compose_pipeline_step(cfg, "meta_eval", "r")
    assert (evaluation.n_ways, evaluation.test_db_size, evaluation.progress) == (3, 9, "auto")
    assert ("val_db_size", "test_db_size") in pipeline_feeds("fine_tune", default_config("fine_tune"))
    assert ("test_db_size", "test_db_size") in pipeline_feeds("meta_eval", default_config("meta_eval"))


def test_the_resume_check_ignores_what_does_not_define_the_result_and_every_compat_key(tmp_path):
    saved = OmegaConf.to_container(compose_config("learn_labeler"))
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    rerun = {**saved, "device": "cpu", "gallery": False, "num_workers": 0, "fixed_db": False, "lam": 0.5,
             "normalize_lam": True, "logger_name": "x", "world_size": 2}
    check_reuse(tmp_path, rerun, free_keys("learn_labeler"))
    with pytest.raises(MelaError, match=r"other settings \(K: 400 -> 40; data_aug: False -> True\)"):
        check_reuse(tmp_path, {**rerun, "K": 40, "data_aug": True}, free_keys("learn_labeler"))
    # lam has no effect in learn_labeler, but defines learn_meta_repr's loss.
    assert differing_settings({"lam": 0.001}, {"lam": 0.5}, free_keys("learn_meta_repr")) == ["lam: 0.001 -> 0.5"]
    assert readers.read_run(compose_config("learn_labeler"), "learn_labeler").free_keys == free_keys("learn_labeler")


def test_a_compat_key_set_to_another_value_warns_once_and_the_defaults_do_not_warn():
    from mela.steps import learn_labeler, sup_baseline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        learn_labeler.read_settings(compose_config("learn_labeler"))
        sup_baseline.read_settings(compose_config("sup_baseline"))
        assert not [w for w in caught if issubclass(w.category, CompatWarning)]
        for _ in range(2):
            learn_labeler.read_settings(compose_config("learn_labeler", ["fixed_db=false", "num_workers=0"]))
    messages = [str(w.message) for w in caught if issubclass(w.category, CompatWarning)]
    assert messages == [
        "fixed_db=False has no effect in learn_labeler (kept for the original scripts' command lines: the labelling "
        "pile is drawn once, from the seed)",
        "num_workers=0 has no effect in learn_labeler (kept for the original scripts' command lines: data lives in "
        "memory, augmentation runs on the device)"]


@pytest.mark.parametrize("config", [*STEP_NAMES, "pipeline_tasks"])
def test_help_lists_every_setting_with_its_default_and_doc_and_the_compat_keys_last(config, capsys):
    command = config.replace("_", "-") if config in STEP_NAMES else "pipeline"
    assert main([command, "--help"] + (["--config-name", config] if config not in STEP_NAMES else [])) == 0
    out = capsys.readouterr().out
    defaults = default_config(config)
    compat = compat_keys(config)
    for s in settings_of(config):
        assert s.name + "=" in out and s.compat_reason(config) in out, s.name
    if compat:
        tail = out.split("accepted for the original scripts' command lines")[1]
        assert {line.split("=")[0].strip() for line in tail.splitlines()[1:] if line.strip()} == set(compat)
    if config == "learn_labeler":
        assert f"  K={defaults.K} " in out and "initial centroids of the clustering" in out
