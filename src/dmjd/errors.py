"""The error a user can fix: something they gave cannot be used."""


class InputError(ValueError):
    """A configuration, data set, checkpoint, output folder or option that cannot be used.

    The message says what was given and what is expected. The command line prints it as one
    line and exits with code 2; any other exception is a bug and keeps its traceback.
    """
