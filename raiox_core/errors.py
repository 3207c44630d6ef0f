"""Exception types whose messages are one sentence a user can read."""


class RaioxError(Exception):
    """Base class: the message is shown to the user as is, without a traceback."""


class ConfigError(RaioxError):
    """A setting has a value we cannot use."""


class ImageRejected(RaioxError):
    """An input file is not an image we accept; the message says why."""


class NamingError(RaioxError):
    """A file name does not follow MANUFACTURER_MODEL_DIAMETER[_NN].ext and no labels were given."""


class StorageError(RaioxError):
    """The image store could not be read or written."""


class DatabaseUnavailable(RaioxError):
    """The database cannot be reached or refused the operation."""


class ModelLoadError(RaioxError):
    """The OpenCLIP model or its weights could not be loaded."""


class NotFound(RaioxError):
    """A reference with the given id does not exist."""


class InvalidInput(RaioxError):
    """An argument of a public function is out of its range or of the wrong kind."""


class DuplicateReference(RaioxError):
    """An image with the same content hash is already a reference (possibly added concurrently)."""

    def __init__(self, reference_id: int):
        super().__init__(f"Already stored as reference {reference_id}.")
        self.reference_id = reference_id


class BackupError(RaioxError):
    """An archive cannot be written, or is not a readable Raiox backup; the message says why."""


class TooFewReferences(RaioxError):
    """Not enough reference vectors to build a map or an evaluation."""


class ReducerMissing(RaioxError):
    """A map loaded from the cache cannot place new points: its reducer file is gone or unreadable."""


class RemoteFileError(RaioxError):
    """A file named by URL (a web form's upload) was refused or could not be downloaded."""


class Overloaded(RaioxError):
    """More work is waiting than the server accepts; the caller should retry shortly."""


class ExplainUnavailable(RaioxError):
    """The loaded image model has no patch tokens to build a similarity map from."""
