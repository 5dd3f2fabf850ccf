"""The one error type the command line turns into a one-line message and a non-zero exit."""


class SactError(Exception):
    """A problem with the user's input or environment; the message is one line for the user."""
