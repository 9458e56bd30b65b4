"""MeLa: meta label learning for few-shot classification."""

__version__ = "0.1.0"
