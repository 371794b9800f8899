"""Response cache: exact and semantic, scoped by tenant and model version by construction."""
