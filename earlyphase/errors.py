"""One exception type for mistakes a user can fix: the CLI prints its message on one line, exits 2."""


class UserError(Exception):
    """Bad input (config, data, checkpoint, store) that the user can fix; the message says how."""
