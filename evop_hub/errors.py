"""One exception type for problems the user can fix.

The CLI prints an ``EvopError`` as a single line (no traceback unless ``--debug``),
so its message must say what is wrong *and* what to do about it.
"""


class EvopError(Exception):
    """A user-actionable error: bad input, missing files, no network, refused surgery."""
