"""inferplane: one OpenAI-compatible endpoint in front of every model you run or rent.

Importing this package does no I/O; `inferplane.api.app.create_app` builds a server.
"""

__version__ = "0.1.0"
