"""procmon: every process exit on every host as one validated JSON event."""

__version__ = "0.1.0"
