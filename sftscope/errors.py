"""One exception type for bad user input, so the CLI can turn it into a one-line error."""


class SftscopeError(Exception):
    """Bad input or an unusable environment; the message names the file or field at fault."""
