"""The hub's small error taxonomy (as in Singer / Airbyte): what failed, and what to do about it.

Messages are in French: they reach DSI teams, DPOs and partners. They never carry an identifier.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub reports to a user instead of a traceback."""


class ConfigurationError(HubError):
    """A missing or wrong setting; the message names the variable to set."""


class FatalInputError(HubError):
    """The whole input file is unusable (malformed, invalid against its schema): it is quarantined."""

    def __init__(self, message: str, *, element: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.element = element
        self.line = line


class RecordError(HubError):
    """One record is invalid; it is rejected with this reason and the others go on."""


class RetriableError(HubError):
    """A transient failure (network, lock): the orchestrator may retry."""
