"""Errors a user can act on. Each message says what was wrong, with the values, and what to do."""

from __future__ import annotations


class MTSSError(Exception):
    """Base class of the errors MTSS raises on bad input or bad files."""


class InputError(MTSSError, ValueError):
    """An input volume or case folder cannot be used as given."""


class BundleError(MTSSError):
    """A model bundle is missing, incomplete, corrupt or tampered with."""


class OutputError(MTSSError, OSError):
    """A result cannot be written where it was asked to go."""


class Cancelled(Exception):
    """The user cancelled long work. Not an error: callers report it and stop quietly."""
