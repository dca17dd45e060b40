"""The one exception type users see: its message is a single line that says what is wrong and how to fix it."""


class SkipsearchError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits with code 2."""
