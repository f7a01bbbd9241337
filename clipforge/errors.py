"""One base for every user-facing error (a wrong config, flag, file or dataset: the message says what to do).

The CLIs catch UserError only: one line on stderr, exit 2. Anything else is a bug and raises with its
traceback (exit 1). Subclasses also derive from the builtin they used to be (ValueError, FileNotFoundError)
so that callers catching those keep working:

    class ShardError(UserError, ValueError): ...
"""


class UserError(Exception):
    """A mistake in what the user gave (config, flags, files, data); str(err) is the one line to print."""


class UserFileNotFound(UserError, FileNotFoundError):
    """A path the user gave (a checkpoint, a file named in a config or flag) does not exist."""
