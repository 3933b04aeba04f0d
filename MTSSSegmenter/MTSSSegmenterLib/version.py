"""The MTSS version, recorded in every bundle."""

__version__ = "0.1.0"
