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

# Net allocations of tracked objects between two collections of the youngest generation
# (CPython: 700). Every 10th young pass is a middle one and every 10th middle one may be a
# full one, so this also spaces the full passes: while a 5,000-socket wave is queued (each
# waiting upgrade holds ~60 objects: aiohttp's request, its task, headers), 700 ran five
# full passes of 73-299 ms; 5,000 ran none, its longest pass (a middle one) 48 ms.
YOUNG_THRESHOLD: Final = 5000


def freeze_start_up() -> None:
    """Collect what the start-up left, then freeze the rest out of every later pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    log.debug("heap frozen", extra={"frozen": gc.get_freeze_count()})
