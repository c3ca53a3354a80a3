"""Whether a compiled call lets other threads run (releases the GIL) while it works."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def other_thread_ran_during(call: Callable[[], Any]) -> bool:
    """Whether a thread spinning in Python ran in the middle half of `call`. Holding the
    GIL, a compiled call leaves it no moment there (the interpreter only switches threads
    between bytecodes, at the call's edges); releasing it, the thread runs on another
    core, or on this one whenever the OS gives it a turn."""
    ticks: list[float] = []
    stop = threading.Event()

    def spin() -> None:
        last = 0.0
        while not stop.is_set():
            now = time.perf_counter()
            if now - last > 0.001:
                ticks.append(now)
                last = now

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.01)
        start = time.perf_counter()
        call()
        end = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    quarter = (end - start) / 4
    return any(start + quarter < tick < end - quarter for tick in ticks)
