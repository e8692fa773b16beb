"""Observability: Prometheus metrics (`metrics`, `loop_metrics`), JSON logs (`logs`) and
the request's id and trace context (`correlation`).

May import: `proxy.config`, `proxy.core`. No metric label ever carries a path, a token or
a principal id (closed sets only); a log line never carries a path, a query or a token,
and the access line names who (principal and token *ids*, issuer) and why (spec codes).
"""
