"""POST /v1/guardrails/analyze."""
