"""Routing: aliases -> deployments, policy rules, strategies, retries, fallbacks and
circuit breakers."""
