"""One exception type for problems the user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input: a config key, a file, a column, a model name. The message says what to do."""

    exit_code = 2
