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
