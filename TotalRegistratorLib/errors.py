"""Errors that the command line turns into a one-line message and exit code 2."""


class InputError(Exception):
    """Bad user input: the message names the offending file and the problem."""


class InputWarning(UserWarning):
    """A questionable input that can still be registered: one line naming the file, recorded in the report."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM); raised in the main thread so outputs are cleaned up."""
