"""Exceptions raised by ood_zoo. Each one says what was wrong and, where it helps, what to do."""


class OodZooError(Exception):
    """Base class of every error ood_zoo raises on purpose."""


class InputError(OodZooError, ValueError):
    """Bad input data: NaN/Inf, wrong rank or dimension, empty, mismatched labels, k > bank size."""


class NotFittedError(OodZooError, RuntimeError):
    """A detector was used before ``fit`` (or ``predict`` before a threshold was set)."""


class UnknownNameError(OodZooError, KeyError):
    """No registered detector, model or dataset has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownDetectorError(UnknownNameError):
    """No registered detector has the requested name."""


class PluginError(OodZooError, RuntimeError):
    """A plugin failed to load or returned something invalid."""


class DuplicateDetectorError(PluginError):
    """Two plugins register a detector under the same name."""


class PersistenceError(OodZooError, OSError):
    """A saved detector is missing, truncated, tampered with, or belongs to another detector."""


class BackendUnavailableError(OodZooError, RuntimeError):
    """The kernel backend asked for through ``OOD_ZOO_BACKEND`` is not usable here."""
