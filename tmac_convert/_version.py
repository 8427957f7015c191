"""The package version (its own module: importable from anywhere in the package without a cycle)."""

__version__ = "0.1.0"
