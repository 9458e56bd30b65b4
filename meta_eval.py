"""The reference's entry point: `python meta_eval.py key=value ...` (same as `mela meta-eval ...`)."""

from mela.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("meta_eval")
