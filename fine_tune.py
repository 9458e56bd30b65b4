"""The reference's entry point: `python fine_tune.py key=value ...` (same as `mela fine-tune ...`)."""

from mela.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("fine_tune")
