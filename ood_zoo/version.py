"""The version of ood_zoo, in a module of its own so that no submodule imports the package."""

__version__ = "0.1.0"
