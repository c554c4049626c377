"""The routing-quality harness behind benchmarks/routing_quality.py: the suite sent through the
stack, routing strategies swept over its outcomes, and RouteLLM's metrics."""
