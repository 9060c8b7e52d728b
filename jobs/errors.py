"""Errors a user can act on: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or environment (flag, model name, checkpoint, credentials...), stated in one line."""
