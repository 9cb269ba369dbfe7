"""One exception type for problems a user can fix, so the CLI can print them as one line."""


class LungCTError(Exception):
    """A problem with the user's input, configuration or files (not a bug in lungct)."""
