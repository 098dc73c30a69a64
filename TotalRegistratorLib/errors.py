"""Errors that the command line turns into a one-line message and exit code 2."""


class InputError(Exception):
    """Bad user input: the message names the offending file and the problem."""
