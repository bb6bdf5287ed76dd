"""Errors the engine raises, and its cautions: each carries one sentence a user can act on."""


class DtmError(Exception):
    """Bad input, a broken model or a failed write; the message is for the user."""


class DtmCancelled(DtmError):
    """The caller asked to stop; nothing was written."""

    def __init__(self) -> None:
        super().__init__("The run was cancelled; no output was written.")


class Caution(str):
    """A run's message that asks the user to check the input (shown as a warning)."""
