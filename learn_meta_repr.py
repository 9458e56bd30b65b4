"""The reference's entry point: `python learn_meta_repr.py key=value ...` (same as `mela learn-meta-repr ...`)."""

from mela.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("learn_meta_repr")
