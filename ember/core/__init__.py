"""Ember's serving core, pure Python (no torch, no numpy): requests, the scheduler, the paged KV
block pool with its per-request block tables, and the radix-tree prefix cache.

The engine builds `Request`s and drives a `Scheduler`; the runner turns each `SchedulerOutput`
into tensors and returns sampled token ids.
"""

from __future__ import annotations

from ember.core.block_pool import NULL_BLOCK, BlockPool
from ember.core.config import CacheConfig, KVGroupSpec, SchedulerConfig
from ember.core.kv_cache_manager import KVCacheManager, PrefixHit
from ember.core.outputs import RequestUpdate, ScheduledRequest, SchedulerOutput, SchedulerStats
from ember.core.prefix_cache import PrefixCache, PrefixCacheStats
from ember.core.request import (
    FinishReason,
    RejectReason,
    Request,
    RequestRejected,
    RequestStatus,
    StopCriteria,
)
from ember.core.scheduler import Scheduler

__all__ = [
    "NULL_BLOCK",
    "BlockPool",
    "CacheConfig",
    "FinishReason",
    "KVCacheManager",
    "KVGroupSpec",
    "PrefixCache",
    "PrefixCacheStats",
    "PrefixHit",
    "RejectReason",
    "Request",
    "RequestRejected",
    "RequestStatus",
    "RequestUpdate",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SchedulerStats",
    "StopCriteria",
]
