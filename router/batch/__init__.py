"""Asynchronous work at the router's edge: OpenAI's Files and Batch APIs and single background
requests, on a durable queue (router/batch/store.py) that router replicas drain with their spare
capacity."""
