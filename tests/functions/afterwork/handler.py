"""A function whose thread keeps working after the handler returns (as a fire-and-forget
task would): it ticks every 10 ms and the handler reports the ticks so far."""

import itertools
import threading
import time

ticks: list[float] = []


def _tick() -> None:
    while True:
        ticks.append(time.monotonic())
        time.sleep(0.01)


threading.Thread(target=_tick, daemon=True).start()


def handler(event, context):  # type: ignore[no-untyped-def]
    largest_gap = max((b - a for a, b in itertools.pairwise(ticks)), default=0.0)
    return {"ticks": len(ticks), "largestGapSeconds": largest_gap}
