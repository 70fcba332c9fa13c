"""Exceptions for problems the user can fix (bad input files, wrong arguments).

The CLI prints an `EditkitError` as one line, `editkit: error: <message>`, and exits with status 2; any other
exception is a bug and exits with status 1.
"""


class EditkitError(Exception):
    """A user or input error; the message is one line naming the file and what to do."""


class CheckpointError(EditkitError):
    """A weights file, its JSON config or the model registry is missing, corrupt or does not match."""


class UnsafePickleError(CheckpointError):
    """A pickle asks for a global outside the allow-list: it was refused before anything ran."""


class OutputExistsError(EditkitError):
    """An output file exists and overwriting was not asked for."""


class OutputError(EditkitError):
    """An output cannot be written: the folder is read-only, a path part is a file, the disk is full."""


class ImageError(EditkitError):
    """An image file is missing, empty, not an image, truncated, too large or in a form editkit cannot use."""


class EditkitWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


class FaceError(EditkitError):
    """A photo holds no usable face: none found, too small, or the asked-for face index does not exist."""


class NoFaceError(FaceError):
    """The face detectors found no face in a photo."""


class FaceTooSmallError(FaceError):
    """The face is too small in the photo for a useful crop."""


def one_line(error: BaseException) -> str:
    """An exception's message with its whitespace (newlines included) folded: how every command reports errors."""
    return " ".join(str(error).split())
