"""One exception family, so scripts can print a single clear sentence instead of a traceback."""


class TinyaeError(Exception):
    """A user-facing error: the message says what was wrong and what to do."""


class ConfigError(TinyaeError, ValueError):
    """A recipe or CLI value is unknown or of the wrong type."""


class TeacherLoadError(TinyaeError, OSError):
    """The teacher VAE could not be found or loaded."""


class DataError(TinyaeError, ValueError):
    """The training or evaluation data is missing, empty or unusable."""


class ExportError(TinyaeError, OSError):
    """An export target exists, or weights are in a layout tinyae does not know."""


class OutputError(TinyaeError, OSError):
    """An output folder cannot be written (permissions, a read-only file system)."""


class DiskFullError(OutputError):
    """A write ran out of space (or quota); what was there before is kept."""


class CheckpointError(TinyaeError):
    """A checkpoint to resume from is incomplete or damaged."""


class DependencyError(TinyaeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class DivergedError(TinyaeError):
    """A run's loss or weights stopped being finite numbers; nothing from then on was saved."""
