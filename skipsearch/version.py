"""The package's version: one place, read by pyproject.toml, profiles' provenance and the CLI."""

__version__ = "0.1.0"
