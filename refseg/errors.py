"""User-facing errors: the CLI prints them as one line and exits 2; the server maps them to 4xx."""


class RefsegError(Exception):
    """Base class of errors caused by the user's input (never a bug in refseg)."""


class ImageError(RefsegError):
    """The image cannot be read, is too large, or is not an image."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (refused before decoding)."""


class TextError(RefsegError):
    """The expression is empty or unusable."""


class CheckpointError(RefsegError):
    """A checkpoint is missing, corrupt, or for another architecture."""


class ConfigError(RefsegError):
    """A config key is unknown, has the wrong type, or points to missing data."""


class OutputError(RefsegError):
    """An output path cannot be written."""


class MissingExtraError(RefsegError):
    """An optional feature was asked for without its extra installed (see :mod:`refseg.extras`)."""


class TrainingError(RefsegError):
    """Training cannot go on: the loss or the weights are no longer finite (a diverged run)."""
