"""Exception types for user errors that the CLI prints as one line without a traceback."""


class UserInputError(ValueError):
    """Bad input from the user: a file, a value or an option.

    The message is a single line that names the file or value and states what
    was expected and, where there is one, what to do. The CLI prints it and exits
    with status 2.
    """


class DataError(UserInputError):
    """A dataset file or folder that cannot be read or fails validation."""


class ConfigError(UserInputError):
    """An experiment file or a config override that is invalid."""
