"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """Bad input from a user: the CLI prints the message on one line and exits with status 2."""
