"""The serving load harness behind benchmarks/serve_load.py: workloads, streaming clients per target,
arrival schedules, latency metrics, the max-rate search and the report."""
