"""Exceptions raised by pyrgd."""


class PyrgdError(ValueError):
    """Bad input to a pyrgd entry point: the message names the argument and what was expected.

    A ValueError, so that callers catching ValueError keep working; the command line turns it into exit code 2.
    """


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run on this machine; the message says what to install."""
