"""Exceptions raised by pyrgd."""


class PyrgdError(ValueError):
    """Bad input to a pyrgd entry point: the message names the argument and what was expected.

    A ValueError, so that callers catching ValueError keep working; the command line turns it into exit code 2.
    """


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run on this machine; the message says what to install."""


class Terminated(Exception):
    """Work of several runs (a sweep) ended by SIGTERM, what a batch scheduler sends: what was finished is saved.
    The command line exits with code 143, as ``pyrgd train`` does for one terminated run."""


class ResourceError(PyrgdError):
    """A run would not fit in the memory available (refused before allocating it): the message names the part,
    its estimate, the memory available and the setting to change. The command line exits with code 3."""
