"""One router replica for test_limits.py's cross-process test: 300 requests at once for a tenant
with max_concurrent=4 and 300 for one with 6000 tokens per minute, against the Redis at argv[1]
(keys under the prefix argv[2]). It records, in that Redis, the most requests ever in flight
across replicas and the tokens admitted, and prints when it started and ended as JSON.

    python -m tests.router.gateway.limits_replica redis://127.0.0.1:6379/0 test:"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time

from router.gateway.limits import RateLimited, RedisLimiter
from router.gateway.redis_store import FailureMode, RedisStore
from router.gateway.tenants import Tenant, TenantPolicy

REQUESTS = 300
CONCURRENT = Tenant("concurrent", TenantPolicy(max_concurrent=4))
METERED = Tenant("metered", TenantPolicy(tokens_per_minute=6000))
RESERVATION = 100

# In flight by the count of every replica, and the highest count seen.
ENTER = """
local in_flight = redis.call('INCR', KEYS[1])
if in_flight > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], in_flight) end
"""


async def replica(url: str, prefix: str) -> dict[str, float]:
    # Generous timeout: 600 connections open at once on a busy test machine.
    store = RedisStore(url, timeout_seconds=5.0, prefix=prefix)
    limiter = RedisLimiter(store, FailureMode.CLOSED)
    enter = store.client.register_script(ENTER)
    in_flight_key, most_key = prefix + "in_flight", prefix + "most_in_flight"

    async def concurrent_request() -> int:
        try:
            admission = await limiter.admit(CONCURRENT, 1)
        except RateLimited:
            return 0
        await enter(keys=[in_flight_key, most_key])
        await asyncio.sleep(random.uniform(0, 0.005))
        await store.client.decr(in_flight_key)
        await limiter.settle(admission, used_tokens=1)
        return 1

    async def metered_request() -> None:
        try:
            admission = await limiter.admit(METERED, RESERVATION)
        except RateLimited:
            return
        await store.client.incrby(prefix + "admitted_tokens", RESERVATION)
        await limiter.settle(admission, used_tokens=RESERVATION)

    started = time.time()
    admitted = await asyncio.gather(*(concurrent_request() for _ in range(REQUESTS)),
                                    *(metered_request() for _ in range(REQUESTS)))
    ended = time.time()
    await limiter.close()
    await store.close()
    return {"started": started, "ended": ended, "admitted_concurrent": sum(filter(None, admitted))}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(replica(sys.argv[1], sys.argv[2]))))
