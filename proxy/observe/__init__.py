"""Observability: Prometheus metrics (`metrics`, `loop_metrics`) and JSON logs (`logs`).

May import: `proxy.config`, `proxy.core`. No label or log field ever carries a path, a
token or a principal id; the callers pass only closed sets of values.
"""
