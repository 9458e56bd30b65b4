"""The pipeline steps. Each module has ``read_settings(cfg)`` (the one place it reads its config) and
``run(settings, dataset=None)``: settings in, run folder and a summary dict out."""
