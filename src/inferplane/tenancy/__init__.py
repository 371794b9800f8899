"""Organisations, teams, keys and the principals they resolve to."""
