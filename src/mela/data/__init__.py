"""Base data sets, task samplers and augmentation."""
