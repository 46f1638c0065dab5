"""``flower-supernode`` with a short poll interval while a federation is active.

A Flower 1.41 SuperNode asks the SuperLink for its next message and, when none is there, sleeps a
fixed **3 s** (``flwr/supernode/start_client_internal.py``, ``time.sleep(3)`` in the main loop);
it waits for a ClientApp's reply and for reply objects in 0.5 s steps, and retries a message's
objects starting at 1 s (``pull_objects(initial_backoff=1)``). None of these has a flag. In a
federation the next round's message arrives a fraction of a second after the site's reply, so
every round waits up to 3 s for nothing; at 100 rounds that is minutes of idle time per site.

This launcher runs the unchanged ``flower-supernode`` entry point (same arguments, same
behaviour) with one substitution in that module: its ``time`` is a :class:`PollClock`, which

* after activity (a message pulled or a reply pushed) turns the 3 s idle sleep into ``fast_s``
  (default 0.05 s) for ``window_s`` seconds (default 30 s: longer than a round's aggregation),
* then backs off, doubling from ``fast_s`` up to Flower's 3 s, so an idle SuperNode costs what a
  stock one does,
* caps the short waits (0.5 s reply / object polls) at ``fast_s``,

and its object pulls start retrying at ``fast_s`` instead of 1 s (capped at 1 s). Nothing else
changes: the SuperLink sees a SuperNode that asks a little more often while a run is active.
If the installed Flower does not have the expected module layout, the stock SuperNode runs
with a warning (:func:`patch` returns False).

Usage (the arguments after ``--`` are flower-supernode's)::

    python -m pathstrat.federated.supernode [--fast-s 0.05] [--window-s 30] -- \\
        --superlink HOST:9092 --isolation process --node-config "..."

or ``pathstrat federated supernode -- <flower-supernode arguments>``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: Flower's own idle sleep between message pulls (start_client_internal.py, 1.41).
FLOWER_IDLE_S = 3.0
#: Sleeps of at least this long are the idle pull wait; shorter ones are reply/object waits.
IDLE_SLEEP_MIN_S = 1.0


class PollClock:
    """A stand-in for the ``time`` module of Flower's SuperNode loop (see the module docstring).

    ``sleep`` and ``monotonic`` are injectable so the policy is tested without waiting.
    Every other attribute is the real ``time`` module's.
    """

    def __init__(self, fast_s: float = 0.05, window_s: float = 30.0,
                 idle_cap_s: float = FLOWER_IDLE_S, *,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if fast_s <= 0 or window_s < 0 or idle_cap_s < fast_s:
            raise ValueError("need fast_s > 0, window_s >= 0 and idle_cap_s >= fast_s")
        self.fast_s, self.window_s, self.idle_cap_s = float(fast_s), float(window_s), float(idle_cap_s)
        self._sleep, self._monotonic = sleep, monotonic
        self._lock = threading.Lock()
        self._last_activity = float("-inf")
        self._backoff = self.fast_s

    def mark_activity(self) -> None:
        """A message was pulled or a reply pushed: poll fast for the next ``window_s``."""
        with self._lock:
            self._last_activity = self._monotonic()
            self._backoff = self.fast_s

    def next_idle_wait(self, requested_s: float) -> float:
        """How long the idle pull wait (Flower: ``requested_s`` = 3 s) sleeps now."""
        with self._lock:
            if self._monotonic() - self._last_activity <= self.window_s:
                return min(self.fast_s, requested_s)
            wait = self._backoff
            self._backoff = min(self._backoff * 2.0, self.idle_cap_s)
            return min(wait, requested_s)

    def sleep(self, seconds: float) -> None:
        """Flower's ``time.sleep`` inside the SuperNode loop."""
        if seconds >= IDLE_SLEEP_MIN_S:
            self._sleep(self.next_idle_wait(seconds))
        else:
            self._sleep(min(seconds, self.fast_s))

    def monotonic(self) -> float:
        return self._monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def patch(module: ModuleType, clock: PollClock) -> bool:
    """Install ``clock`` in Flower's SuperNode loop module; False (nothing changed) when the module
    does not have the functions this relies on (another Flower version)."""
    needed = ("time", "pull_objects", "_pull_and_store_message", "_push_messages")
    if not all(hasattr(module, n) for n in needed) or module.time is not time:
        return False
    pull_and_store, push = module._pull_and_store_message, module._push_messages

    @functools.wraps(pull_and_store)
    def _pull_and_store_message(*args: Any, **kwargs: Any) -> Any:
        run_id = pull_and_store(*args, **kwargs)
        if run_id is not None:
            clock.mark_activity()
        return run_id

    @functools.wraps(push)
    def _push_messages(*args: Any, **kwargs: Any) -> Any:
        try:
            return push(*args, **kwargs)
        finally:
            clock.mark_activity()

    module.time = clock
    module.pull_objects = functools.partial(module.pull_objects, initial_backoff=clock.fast_s,
                                            backoff_cap=1.0)
    module._pull_and_store_message = _pull_and_store_message
    module._push_messages = _push_messages
    return True


def main(argv: list[str] | None = None) -> None:
    """``python -m pathstrat.federated.supernode [--fast-s S] [--window-s S] -- <flower args>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, flower_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else ([], argv)
    ap = argparse.ArgumentParser(prog="pathstrat-supernode", description="flower-supernode with a "
                                 "short poll interval while a run is active (arguments after "
                                 "'--' go to flower-supernode).")
    ap.add_argument("--fast-s", type=float, default=0.05,
                    help="poll interval after activity (s); Flower's is 3 s")
    ap.add_argument("--window-s", type=float, default=30.0,
                    help="seconds after activity during which the SuperNode polls every --fast-s")
    args = ap.parse_args(ours)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    if patch(loop, PollClock(args.fast_s, args.window_s)):
        log.info("SuperNode pulls every %.2f s for %.0f s after activity (Flower: every %.0f s)",
                 args.fast_s, args.window_s, FLOWER_IDLE_S)
    else:
        log.warning("this Flower version's SuperNode loop is not the one pathstrat knows; "
                    "running the stock flower-supernode (3 s idle poll)")
    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
