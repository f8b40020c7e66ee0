"""The one exception type for input a user can fix (a file, a value, an option).

The CLIs print its message without a traceback. Host code (edgead, export) subclasses it so one
handler covers both sides of the host/device line.
"""


class UserError(Exception):
    """Bad input: the message names the file or value and says what is expected."""
