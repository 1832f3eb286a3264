"""Prometheus metrics, exposed on GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

REQUESTS = Counter("facegate_requests_total", "HTTP requests by route and status", ["method", "endpoint", "status"])
REQUEST_SECONDS = Histogram("facegate_request_seconds", "HTTP request latency by route", ["endpoint"])
DECISIONS = Counter("facegate_decisions_total", "Identify and verify decisions", ["kind", "decision", "reason"])
STAGE_SECONDS = Histogram(
    "facegate_stage_seconds",
    "Time per data-path stage (decode, align, embed, scan)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TEMPLATES = Gauge("facegate_templates_enrolled", "Templates of the serving model in this replica's index")
MODEL = Info("facegate_model", "The serving model")
JOURNAL_PENDING = Gauge("facegate_journal_pending", "Door decisions (audit events, match counts) queued and not yet committed")
JOURNAL_RETRIES = Counter("facegate_journal_retries_total", "Failed journal writes, each retried")
