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
    """A file could not be fetched from the hub."""


class Interrupted(Exception):
    """The user pressed Stop; raised from a progress callback between steps."""


class GenerationError(UserError):
    """A generation went numerically wrong (NaN/inf, an all-black decode); the message names the likely cause."""
