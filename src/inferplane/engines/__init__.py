"""Engines: one adapter per kind of backend, in three packages by where the code runs.

- `worker/` runs inside a local model's own process: the llama.cpp and
  sentence-transformers engines, stop strings, the worker's socket protocol.
- `local/` is the gateway side of local models: the supervisor that starts and restarts
  their workers, the socket client, the fair queue, prompt templating and tokenizing,
  model assets.
- `remote/` speaks to servers elsewhere over HTTP: the upstream client and the
  OpenAI-compatible and Anthropic adapters.
"""
