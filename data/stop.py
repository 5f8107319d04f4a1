"""Stopping a collection at a safe point on Ctrl-C or SIGTERM.

``GracefulStop`` turns both signals into an ``Interrupted`` exception, at once while an episode is
simulated and only after the save (and the commit, if one is due) while one is written, since a
half-saved episode must not be committed (``data.commit``). ``is_interruption`` finds that
exception where compiled code has wrapped it. This module does not commit anything itself.
"""

import logging
import signal

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Raised by ``GracefulStop`` when the collection is to stop."""


def is_interruption(e: BaseException) -> bool:
    """Whether ``e`` is the stop signal's: raised while robosuite's numba-compiled controller runs,
    the handler's exception comes out as a SystemError ("returned a result with an exception set"),
    possibly wrapped again, by cause or by context, so the whole chain is searched."""
    seen, todo = set(), [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:  # chains can loop
            continue
        if isinstance(e, Interrupted):
            return True
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return False


class GracefulStop:
    """SIGINT/SIGTERM stop the collection at the next safe point: at once while an episode is
    being simulated, after the save (and the commit, if one is due) while one is being written: a
    half-saved episode must not be committed. A second Ctrl-C during a save stops at once, and the
    next run rolls back to the last commit, or finishes it."""

    def __init__(self):
        self.saving = False
        self.requested = False

    def __call__(self, signum, frame):
        if self.saving and not self.requested:
            self.requested = True
            log.warning("stopping after this episode is saved (Ctrl-C again to abort it)")
            return
        raise Interrupted()

    def __enter__(self):
        self._previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
