"""Experiments as researchers run them: multirun sweeps (``mela pipeline -m seed=0,1,2``), their aggregate
over seeds and the paired comparisons of models evaluated on the same tasks."""
