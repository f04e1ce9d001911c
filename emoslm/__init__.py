"""emoslm: an emotionally intelligent spoken language model (IEAT, arXiv 2601.04960)."""

__version__ = "0.1.0"
