"""eval's user-facing errors (clipforge.errors.UserError: `clipforge eval` prints one line, exit 2)."""
from clipforge.errors import UserError


class EvalDataError(UserError, ValueError):
    """The eval data cannot be opened, does not match its manifest or cannot serve the task; the message
    names the file or field."""


class EvalOptionError(UserError, ValueError):
    """An eval option (flag or suite entry) is out of range; the message names it."""
