"""HTTP pieces the three KServe components (predictor, transformer, router) share: bounded
request bodies, client-disconnect cancellation, error shapes, server-sent events, SIGTERM
draining. Imports neither torch nor the engine, so the transformer and router stay small."""
