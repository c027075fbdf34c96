"""Errors shown to the user as one line, with a non-zero exit."""


class LazarusError(Exception):
    """A failure the user can act on; str() is the one-line message."""
