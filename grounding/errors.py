"""Errors a user can cause. Each message says what to do; the UI turns them into `gr.Error`, titled by `title`."""


class GroundingError(ValueError):
    """Base class of every user-facing error of this package."""

    title = "Error"


class InvalidPromptError(GroundingError):
    """The text prompt cannot be used (empty, only punctuation, ...)."""

    title = "Prompt problem"


class InvalidImageError(GroundingError):
    """The image cannot be used (missing, corrupt, too large, ...)."""

    title = "Image problem"


class InvalidThresholdError(GroundingError):
    """A threshold or IoU value is outside its range."""

    title = "Threshold problem"


class WeightsUnavailableError(GroundingError):
    """Weights could not be found locally nor downloaded."""

    title = "Model weights missing"


class CheckpointMismatchError(GroundingError):
    """A checkpoint's keys or shapes do not fit the model it is loaded into."""

    title = "Checkpoint problem"


class InvalidOptionError(GroundingError):
    """A request option (masks on/off, model name, ...) has a value of the wrong kind."""

    title = "Request problem"


class InvalidEditError(GroundingError):
    """A curation edit cannot be applied (a point outside the image, an object no longer shown, a too long label)."""

    title = "Edit problem"


class InvalidVideoError(GroundingError):
    """The video cannot be used (not a video, damaged, no frames, frames too large, ...)."""

    title = "Video problem"


class MissingDependencyError(GroundingError):
    """An optional package a feature needs is not installed (the message says how to install it)."""

    title = "Missing package"


class BatchRunError(GroundingError):
    """A batch engine stopped (its cluster cannot be reached, its model actors cannot start, ...)."""

    title = "Batch run failed"
