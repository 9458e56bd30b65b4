"""Run every self-contained benchmark (each writes its JSON under benchmarks/results/).

labeler_modes.py needs a trained learn_meta_repr model and is run by hand (see its docstring), as are the
long ones: augmentation.py (four demo pipelines, ~35 min), labeler_sweep.py (needs glyph models),
labeler_scale.py, oversplit_signal.py (445 labeler runs, ~15 min), task_collection_scale.py and ddp_cpu.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["eval_heads.py", "glyph_pixel_baseline.py", "glyph_load_time.py", "train_throughput.py"]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
