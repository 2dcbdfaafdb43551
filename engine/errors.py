"""Errors that reach the user as one readable line (CLI) or a Gradio error (UI)."""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and why."""


class SettingsError(UserError):
    """A generation setting is out of range or malformed."""


class ModelDefinitionError(UserError):
    """A model JSON is malformed, names an unknown type, or has unknown fields."""


class ModelFileError(UserError):
    """A weight file is missing, truncated, corrupt, of another family or format."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DownloadError(UserError):
    """A file could not be fetched from the hub; `reason`: why, in one line (offline, the hub's answer...), for a
    caller that words its own message."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


class Interrupted(Exception):
    """The user pressed Stop; raised from a progress callback between steps."""


class Busy(UserError):
    """The job queue is full (for everyone, or for this user): try again later, or cancel a job."""

    def __init__(self, message: str, retry_after: float = 5.0):
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(UserError):
    """The server is stopping and takes no new jobs."""


class GenerationError(UserError):
    """A generation went numerically wrong (NaN/inf, an all-black decode); the message names the likely cause."""
