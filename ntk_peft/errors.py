"""The one exception type for mistakes a user can fix.

Every bad argument, missing file or malformed data row raises `UserError` with
a single line that says what was wrong and what is valid. The console entry
points turn it into that line on stderr and exit status 2; library callers can
catch it like any `ValueError`.
"""


class UserError(ValueError):
    """A problem with the user's input: one line, no traceback at the CLI."""
