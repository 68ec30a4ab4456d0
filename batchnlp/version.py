"""The package version, in a module of its own: the modules that record it (parts, manifests,
the CLI) import it from here, so none of them imports the package's public API module."""

__version__ = "0.1.0"
