"""The package version, in its own module so that any layer can record it without importing `headattr`."""

__version__ = "0.1.0"
