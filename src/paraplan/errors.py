"""One exception type for every problem in user input; the CLI prints its message as one line and exits 2."""


class ParaplanError(ValueError):
    """Bad or unsupported input. The message names what was wrong and what is allowed."""
