"""The garbage collector's share of the loop: what it must look at, and how often.

CPython's cyclic collector walks every tracked object of a generation when it runs, on the
loop's thread. A full (oldest-generation) pass happens when that generation has grown by a
quarter since the last one, so a reconnect wave that adds thousands of sockets in a few
seconds triggers several, each walking the whole heap: the modules, the config, the
routes, the metrics registry (about 50,000 objects before the first request) and every
open socket, 50-260 ms during which no request moves (issue 29, measured with
`gc.callbacks`).

What lives from start to exit is frozen once the process is serving: it is never walked
again, and the full passes cost what the sockets cost. Nothing frozen is lost (objects
freed by reference counting are freed as before; what the start-up left as cyclic garbage
is collected just before). A config reload is not followed by a freeze: what is open then
(sockets) would be frozen with it and its cycles, once closed, never collected.
"""

from __future__ import annotations

import gc
import logging
from typing import Final

log = logging.getLogger("proxy")

# Collections of the youngest generation per net allocations of tracked objects: CPython's
# 700 makes a wave of upgrades (hundreds of short-lived objects each) run one every few
# handshakes; each is cheap, but each also counts towards the older generations' passes.
YOUNG_THRESHOLD: Final = int(__import__("os").environ.get("SIO_GC_YOUNG", "5000"))  # TEMP


def freeze_start_up() -> None:
    """Collect what the start-up left, then freeze the rest out of every later pass."""
    if __import__("os").environ.get("SIO_NOFREEZE"):  # TEMP
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug("heap frozen", extra={"frozen": gc.get_freeze_count()})
