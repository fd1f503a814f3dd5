"""Prometheus metrics of one server, in a registry of its own (so that tests can build several apps).

    curl -s localhost:8000/metrics | grep bigmodel_batch_size

| metric | type | labels |
|---|---|---|
| bigmodel_requests_total | counter | model, outcome: success, bad_request, unauthorized, not_found, too_large, |
|  |  | timeout, overloaded, error |
| bigmodel_server_errors_total | counter | model: 500s on any route (a server bug or a failing device; logged) |
| bigmodel_request_duration_seconds | histogram | model: infer requests, from the first byte read to the answer |
| bigmodel_queue_duration_seconds | histogram | model: time a request waited for its batch to start |
| bigmodel_compute_duration_seconds | histogram | model: one session.run of a batch |
| bigmodel_batch_size | histogram | model: rows per session.run |
| bigmodel_batch_requests | histogram | model: requests merged into one session.run |
| bigmodel_inflight_requests | gauge | model: infer requests being handled now |
| bigmodel_queued_requests | gauge | model: requests waiting for a batch now |
| bigmodel_inflight_bytes | gauge | model: bytes held by infer requests in flight (--max-inflight-mb) |
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

OUTCOMES = {200: "success", 400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "bad_request",
            408: "timeout", 413: "too_large", 500: "error", 503: "overloaded"}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def outcome(status_code: int) -> str:
    return OUTCOMES.get(status_code, "error" if status_code >= 500 else "bad_request")


class ServerMetrics:
    """The server's counters and histograms, already bound to the served model's name."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str, max_batch_size: int) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        reg = self.registry
        self._requests = Counter("bigmodel_requests", "Inference requests by outcome.", ["model", "outcome"],
                                 registry=reg)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, max_batch_size})
        sizes = [s for s in sizes if s <= max_batch_size]
        self.request_duration = Histogram("bigmodel_request_duration_seconds", "Infer request time in the server.",
                                          ["model"], buckets=_LATENCY_BUCKETS, registry=reg).labels(model_name)
        self.queue_duration = Histogram("bigmodel_queue_duration_seconds", "Wait from enqueue to batch start.",
                                        ["model"], buckets=_LATENCY_BUCKETS, registry=reg).labels(model_name)
        self.compute_duration = Histogram("bigmodel_compute_duration_seconds", "session.run time per batch.",
                                          ["model"], buckets=_LATENCY_BUCKETS, registry=reg).labels(model_name)
        self.batch_size = Histogram("bigmodel_batch_size", "Rows per session.run.", ["model"], buckets=sizes,
                                    registry=reg).labels(model_name)
        self.batch_requests = Histogram("bigmodel_batch_requests", "Requests merged into one session.run.",
                                        ["model"], buckets=sizes, registry=reg).labels(model_name)
        self.inflight = Gauge("bigmodel_inflight_requests", "Infer requests being handled.", ["model"],
                              registry=reg).labels(model_name)
        self.queued = Gauge("bigmodel_queued_requests", "Requests waiting for a batch.", ["model"],
                            registry=reg).labels(model_name)
        self.inflight_bytes = Gauge("bigmodel_inflight_bytes", "Bytes held by infer requests in flight.", ["model"],
                                    registry=reg).labels(model_name)
        self.server_errors = Counter("bigmodel_server_errors", "500s on any route: server bugs, failing devices.",
                                     ["model"], registry=reg).labels(model_name)
        self._by_outcome = {name: self._requests.labels(model_name, name) for name in {*OUTCOMES.values(), "error"}}

    def count(self, status_code: int) -> None:
        name = outcome(status_code)
        counter = self._by_outcome.get(name) or self._requests.labels(self.model_name, name)
        counter.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
