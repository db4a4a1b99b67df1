"""Loaded by the emulator's Python at start-up (`PYTHONPATH`, set by
infra/src/cloud/emulator.rs): a fix to ministack 1.5.33 until upstream has
one (docs/upstream/ministack-fifo-dedup.md).

ministack rebuilds a FIFO queue's whole deduplication cache on every send to
drop expired entries. The cache holds five minutes of sends, so at a few
hundred messages a second each send walks tens of thousands of entries and
the emulator, not Ingot, becomes the wall. Pruning at most once a second per
queue keeps the cache as bounded; an entry can outlive its five minutes by
under a second.
"""

import time

from ministack.services import sqs

_prune_every_send = sqs._prune_dedup


def _prune_dedup(queue):
    now = time.time()
    if now - queue.get("_dedup_pruned_at", 0.0) >= 1.0:
        queue["_dedup_pruned_at"] = now
        _prune_every_send(queue)


sqs._prune_dedup = _prune_dedup
