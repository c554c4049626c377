"""What only the Redis store does: its queue outlives the loss of its Stream (Redis emptied or
restarted without persistence) and is read again from the Stream's start."""

from __future__ import annotations

from router.batch.redis_store import RedisBatchStore
from router.gateway.redis_store import RedisStore
from tests.router.batch.test_store import LEASE_SECONDS, add_batch_of


async def test_the_queue_is_drained_again_after_its_stream_was_lost(redis_server, redis_prefix):
    redis = RedisStore(redis_server.url, prefix=redis_prefix)
    store = RedisBatchStore(redis)
    try:
        await add_batch_of(store, "batch-1", 1)
        assert [item.custom_id for item in await store.claim("worker-1", 10, LEASE_SECONDS)] == ["request-0"]

        await redis.client.delete(redis.key("batch", "queue"))
        await add_batch_of(store, "batch-2", 2)
        claimed = await store.claim("worker-1", 10, LEASE_SECONDS)
        assert [(item.batch_id, item.custom_id) for item in claimed] == [("batch-2", "request-0"),
                                                                          ("batch-2", "request-1")]
    finally:
        await store.close()
        await redis.close()
