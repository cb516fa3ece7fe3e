"""Errors a user can cause. Each message says what to do; the UI turns them into `gr.Error`."""


class GroundingError(ValueError):
    """Base class of every user-facing error of this package."""


class InvalidPromptError(GroundingError):
    """The text prompt cannot be used (empty, only punctuation, ...)."""


class InvalidImageError(GroundingError):
    """The image cannot be used (missing, corrupt, too large, ...)."""


class InvalidThresholdError(GroundingError):
    """A threshold or IoU value is outside its range."""


class WeightsUnavailableError(GroundingError):
    """Weights could not be found locally nor downloaded."""


class CheckpointMismatchError(GroundingError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""
