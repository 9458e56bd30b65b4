"""The reference's entry point: `python sup_baseline.py key=value ...` (same as `mela sup-baseline ...`)."""

from mela.cli import hydra_entry

if __name__ == "__main__":
    hydra_entry("sup_baseline")
