"""The one exception type for mistakes a user can fix.

Any layer raises :class:`UserError` when bad input (a flag, a gin binding, a
path, a shape) is the cause. The CLI prints its message alone, without a
traceback, and exits with status 2. The message must name the offending item
and say how to fix it.
"""


class UserError(Exception):
    """Bad input from the user; the message names the item and the fix."""
