"""What the three KServe components (predictor, transformer, router) share: their shape (the
parser, build -> load -> serve, the kserve.Model base) and their HTTP pieces: bounded request
bodies, client-disconnect cancellation, error shapes, server-sent events, SIGTERM draining. Imports neither torch nor the engine, so the transformer and router stay small."""
