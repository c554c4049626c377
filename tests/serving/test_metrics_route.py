"""/metrics keeps vLLM's `vllm:` names whatever format the scraper asks for: Prometheus asks for
OpenMetrics first, and prometheus_client's OpenMetrics writer turns the colons of sample names into
underscores (prometheus/client_python#1177)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, Gauge

from serving.server import metrics_in_text_format

# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_a_prometheus_scrape_sees_the_colons_of_vllm_names() -> None:
    gauge = Gauge("vllm:test_metrics_route_gauge", "A gauge with vLLM's prefix.")
    try:
        gauge.set(3)
        app = FastAPI()
        app.add_api_route("/metrics", metrics_in_text_format, methods=["GET"])
        response = TestClient(app).get("/metrics", headers={"accept": PROMETHEUS_ACCEPT})
    finally:
        REGISTRY.unregister(gauge)
    assert response.headers["content-type"].startswith("text/plain;")
    assert "\nvllm:test_metrics_route_gauge 3.0\n" in response.text
