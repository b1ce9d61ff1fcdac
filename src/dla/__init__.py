"""dla: the Deep Learning Applications labs as reproducible experiments."""

__version__ = "0.1.0"
