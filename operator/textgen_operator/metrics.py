"""The operator's own Prometheus metrics (prometheus_client's default registry), served over HTTP at /metrics by
`python -m textgen_operator` on --metrics-port (constants.METRICS_PORT; 0 disables). handlers.py counts; nothing
here knows kopf. What each one counts: README.md, "Metrics".
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, start_http_server

RECONCILE_OUTCOMES = ("applied", "unchanged", "invalid", "conflict", "error")
REPAIRED_KINDS = ("RayService", "NetworkPolicy")
HANDLERS = ("reconcile", "rayservice_event", "repair", "refresh_status")

RECONCILES = Counter("textgen_operator_reconciles", "Reconciles of a TextGenService (create, spec update, resume).",
                     ["outcome"])
DRIFT_REPAIRS = Counter("textgen_operator_drift_repairs",
                        "Objects re-applied outside reconcile because they drifted from their TextGenService or "
                        "went missing (or a NetworkPolicy deleted there, policies switched off).", ["kind"])
HANDLER_ERRORS = Counter("textgen_operator_handler_errors",
                         "Handler and loop runs that raised (kopf retries reconcile; the loops retry next round).",
                         ["handler"])
MANAGED = Gauge("textgen_operator_managed_textgenservices", "TextGenServices the operator watches.")

# Every series exists from the start at 0, so that rate() and alerts see the first increment.
for _outcome in RECONCILE_OUTCOMES:
    RECONCILES.labels(_outcome)
for _kind in REPAIRED_KINDS:
    DRIFT_REPAIRS.labels(_kind)
for _handler in HANDLERS:
    HANDLER_ERRORS.labels(_handler)


def serve(port: int, addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve /metrics on `port` in a daemon thread; None when `port` is 0 (disabled). A port in use raises OSError,
    so a misconfigured operator fails at start instead of running without its metrics."""
    if port == 0:
        return None
    server, _thread = start_http_server(port, addr)
    return server
