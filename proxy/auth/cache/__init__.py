"""The verification cache: verdicts (Principals and rejections) by token hash.

- `store`: the cache itself: deadlines and refresh points, negative entries, the stale
  window, the shared level asked on a miss;
- `flights`: one load in flight per key, and a waiter's deadline;
- `generations`: two generations of packed tables, the older dropped wholesale (LRU-ish
  eviction without per-entry bookkeeping);
- `entries`: an entry packed into a fixed-size record (`PackedTable`);
- `ids`: interning of the strings entries repeat (subjects, token ids, scopes).

May import: `proxy.observe`, `proxy.config`, `proxy.core`. Never holds a raw token.
"""
