"""The one exception type the CLI turns into a one-line message and exit code 2."""


class PlastError(Exception):
    """A user-facing error: bad recipe, bad option, missing or corrupt data file."""
