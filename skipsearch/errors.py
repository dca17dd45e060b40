"""The one exception type users see: its message is a single line that says what is wrong and how to fix it."""


class SkipsearchError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name where it has none:
    what a one-line error quotes of a library's multi-line message."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
