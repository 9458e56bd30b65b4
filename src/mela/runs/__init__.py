"""Run folders: where each step's run lives, how later steps find it, and how it resumes."""

from mela.runs.store import DONE_FILE, MODEL_FILE, Run, RunSettings, RunStore, start_run

__all__ = ["DONE_FILE", "MODEL_FILE", "Run", "RunSettings", "RunStore", "start_run"]
