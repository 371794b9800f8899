"""OpenAI-compatible endpoints, one sub-package per endpoint."""
