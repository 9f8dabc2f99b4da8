"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`."""


class RWKVEdgeError(Exception):
    """A problem with the user's input: bad path, wrong file, wrong shape. Exit code 2."""

    exit_code = 2


class ValidationFailed(RWKVEdgeError):
    """A model ran, but its numbers are outside the bounds. Exit code 1."""

    exit_code = 1
