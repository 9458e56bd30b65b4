"""The reference's entry point: `python learn_labeler.py key=value ...` (same as `mela learn-labeler ...`)."""

from mela.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("learn_labeler")
