"""Exception groups: unwrapping the one exception a hidden nursery can hold."""

from __future__ import annotations


def single_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception inside ``group`` (nested groups included), or None if several.

    For a nursery the caller cannot see (``async with`` owning one), where at
    most one exception is possible: raise it, not a group holding it.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc
