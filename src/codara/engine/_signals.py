"""Signal names Codara reserves for itself, in one place.

A signal under a reserved prefix announces something another part of Codara has already
recorded: ``review:<id>`` wakes a run whose review was decided, and is sent only by the
review service, inside the transaction that stores the decision (``store.signal_run``).
Every public way to send a signal (``App.send_signal``, ``codara signal``, the REST API)
refuses these names with :class:`~codara.errors.ReservedSignalError`.
"""

from __future__ import annotations

from codara.errors import ReservedSignalError

__all__ = ["RESERVED_SIGNAL_PREFIXES", "REVIEW_SIGNAL_PREFIX", "check_signal_name"]

REVIEW_SIGNAL_PREFIX = "review:"
RESERVED_SIGNAL_PREFIXES: tuple[str, ...] = (REVIEW_SIGNAL_PREFIX,)


def check_signal_name(name: str) -> None:
    """Refuse a signal name that only Codara itself may send."""
    for prefix in RESERVED_SIGNAL_PREFIXES:
        if name.startswith(prefix):
            raise ReservedSignalError(
                f"signal {name!r} is reserved: names starting {prefix!r} are sent only by "
                "the review service when a person (or a deadline) decides the review",
                hint="decide the review instead: `codara review approve|edit|reject "
                f"{name[len(prefix) :] or '<id>'}`, the console, or POST "
                "/api/reviews/{id}/approve|edit|reject",
            )
