from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import Server, running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded default (gemma-3-270m + all-minilm-l6-v2), shared by the session."""
    with running_server(tmp_path_factory.mktemp("data")) as srv:
        yield srv


@pytest.fixture(scope="session")
def gguf_path(server: Server) -> Path:
    """The GGUF the default server provisioned (and sha256-verified) into its data dir."""
    return next((server.data_dir / "models").glob("*.gguf"))


@pytest.fixture(scope="session")
def vocab(gguf_path: Path) -> Iterator[Any]:
    """The model's own tokenizer, loaded in the test process (vocabulary only)."""
    from llama_cpp import Llama

    # verbose=True: the quiet mode redirects stdio through /dev/null handles it leaks.
    llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=True)
    yield llm
    llm.close()
