"""The gateway at the router's edge: tenants and their keys, rate, concurrency and budget limits,
real-time token metering into a durable usage ledger, idempotent retries and a response cache.
State is in process for one replica, or in Redis (router/gateway/redis_store.py) shared by many."""
