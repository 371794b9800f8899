"""Metrics, logs and (later) the usage ledger and traces."""
