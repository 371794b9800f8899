"""Engines (one adapter per kind of backend) and the worker supervisor.

Gateway side: `supervisor.Supervisor` starts one worker process per local model and
hands out `client.WorkerClient`s. Worker side: `worker.main` loads one engine
(`llamacpp.LlamaCppEngine` or `sentence_transformers.EmbeddingEngine`) and serves it
over a Unix socket speaking `protocol`.
"""
