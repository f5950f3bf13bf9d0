"""Prometheus metrics of one server (its own registry, so several apps can live in a process).

- ``particlescale_requests_total{endpoint,status}``: finished HTTP requests.
- ``particlescale_request_duration_seconds{endpoint}``: latency histogram (whole request,
  streaming ones until the last byte).
- ``particlescale_tokens_total{kind}``: ``prompt``, ``completion`` (every generated token),
  ``reward`` (tokens read by the reward model), counted when a run completes (a failed or
  cancelled run's usage is not known to the server).
- ``particlescale_errors_total{kind}``: ``bad_request``, ``auth``, ``too_large``, ``budget``,
  ``overloaded``, ``upstream_<connect|timeout|http|protocol>``, ``request_timeout``,
  ``cancelled`` (client went away), ``internal``.
- ``particlescale_active_runs``: runs in flight.
- ``particlescale_runs_total{method}``: completed runs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from particlescale.types import Usage

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600, float("inf"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("particlescale_requests", "HTTP requests", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("particlescale_request_duration_seconds", "Request latency",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("particlescale_tokens", "Tokens processed", ["kind"], registry=r)
        self.errors = Counter("particlescale_errors", "Errors by kind", ["kind"], registry=r)
        self.active = Gauge("particlescale_active_runs", "Runs in flight", registry=r)
        self.runs = Counter("particlescale_runs", "Completed runs", ["method"], registry=r)

    def observe_usage(self, usage: Usage) -> None:
        self.tokens.labels("prompt").inc(usage.prompt_tokens)
        self.tokens.labels("completion").inc(usage.generated_tokens)
        self.tokens.labels("reward").inc(usage.prm_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
