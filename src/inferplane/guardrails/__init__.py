"""Guardrails: policies of rules, the detectors they run, and what their actions do to a text."""
