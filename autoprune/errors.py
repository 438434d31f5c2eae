"""Exceptions raised by autoprune.

Every error a user can cause is an :class:`AutopruneError`, a ``ValueError`` subclass whose
message is one line naming the bad input and what was expected. The CLI prints that line and
exits with status 2.
"""


class AutopruneError(ValueError):
    """Base class of the errors caused by bad input."""


class UnknownModelError(AutopruneError):
    """A model name that no registry entry, torchvision model or import path matches."""


class TraceError(AutopruneError):
    """A model construct the channel tracer cannot follow."""


class RuleError(AutopruneError, TypeError):
    """A tracer rule that cannot be registered (a target that is not a module class, a function
    or a tensor-method name; a handler that is not callable) or removed. A TypeError too, as
    register_rule raised before it had its own type."""


class SpaceError(AutopruneError):
    """A search-space setting or override file that is invalid."""


class WidthError(AutopruneError):
    """A width vector of the wrong length or with a width outside the allowed set."""


class ArchError(AutopruneError):
    """An architecture JSON that is malformed, of another schema or for another model."""


class BudgetError(AutopruneError):
    """A budget that cannot be parsed or cannot be met."""


class DataError(AutopruneError):
    """A dataset that is missing, corrupted or of the wrong form."""


class CheckpointError(AutopruneError):
    """A checkpoint that is missing, corrupted or for another model."""


class WeightsError(AutopruneError):
    """Weights that cannot be had for a model: no pretrained weights for its name, a weights
    file that does not fit it."""


class WeightsNotCachedError(WeightsError):
    """Pretrained weights that are not in the library's cache and cannot be downloaded
    (offline, or the download failed); the message names the folder and file to fill."""


class DeviceError(AutopruneError):
    """A requested device that this machine does not have."""


class KeepRuleError(AutopruneError):
    """A keep rule that is not registered, or a data-driven one used without its data."""


class SearchError(AutopruneError):
    """A search setting that is invalid (unknown method, unreachable storage, ...)."""


class OutputError(AutopruneError):
    """An output folder that cannot be created or written (a file, under a file, read-only)."""


class ExportError(AutopruneError):
    """A model that cannot be exported, or whose export does not reproduce its outputs."""


class TrainingError(AutopruneError):
    """Training that cannot go on: a non-finite loss, an unusable configuration."""


def one_line(exc: BaseException) -> str:
    """The first non-empty line of ``exc``'s message, or its type name when it has none.

    Error messages that quote a library's exception use this, so that a multi-line message
    (a traceback-like text, advice spread over lines) stays one line and an empty message
    does not become an IndexError.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
