"""Code that runs inside a local model's worker process (`python -m
inferplane.engines.worker.main`): one engine, served over a Unix socket."""
