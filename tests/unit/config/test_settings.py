from __future__ import annotations

from pathlib import Path

import pytest

from inferplane.config import ConfigError, load_settings


def test_embedded_default_needs_no_file(tmp_path: Path) -> None:
    settings = load_settings(env={"INFERPLANE_DATA_DIR": str(tmp_path)})
    assert [m.id for m in settings.models] == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert settings.data_dir == tmp_path
    assert settings.admin_key is None
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)


def test_env_and_flags(tmp_path: Path) -> None:
    settings = load_settings(env={"INFERPLANE_ADMIN_KEY": "k"}, host="0.0.0.0", port=9000)
    assert settings.admin_key == "k"
    assert settings.data_dir == Path("./.inferplane").absolute()
    assert settings.server.port == 9000


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_file_with_a_gguf_path(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    cfg = _write(
        tmp_path,
        f"server: {{port: 1234}}\nmodels:\n  - {{id: m, engine: llamacpp, path: {gguf},"
        " context_size: 512, threads: 2, chat_template: 'x'}\n",
    )
    settings = load_settings(cfg, env={})
    assert settings.server.port == 1234
    (model,) = settings.models
    assert (model.path, model.context_size, model.threads, model.chat_template) == (
        gguf,
        512,
        2,
        "x",
    )


_REMOTE = """
models:
  - id: chat
    strategy: weighted
    fallbacks: []
    deployments:
      - name: local-g
        engine: llamacpp
        bundled: gemma3-270m-q4-k-m
        tags: [private]
        weight: 90
      - name: up
        engine: openai_compatible
        base_url: http://127.0.0.1:9/v1
        model: served
        api_key_env: UP_KEY
        tags: [external]
        region: eu-west
        weight: 10
        price: {input_per_million: 0.2, output_per_million: 0.6}
"""


def test_an_alias_with_local_and_remote_deployments(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, _REMOTE), env={})
    (alias,) = settings.aliases
    assert (alias.id, alias.strategy, alias.max_attempts) == ("chat", "weighted", 4)
    (remote,) = alias.remotes()
    assert (remote.name, remote.model, remote.weight, remote.region) == (
        "up",
        "served",
        10.0,
        "eu-west",
    )
    # The local deployment is a worker of its own, reachable only through the alias.
    (local,) = settings.models
    assert (local.id, local.listed, local.tags, local.weight) == ("local-g", False, ["private"], 90)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("models:\n  - {id: m, engine: llamacpp, path: /no/such.gguf}\n", "models.0"),
        ("models:\n  - {id: m, engine: llamacpp, bundled: gemma3-270m-q4-k-m, ctx: 1}\n", "ctx"),
        ("models:\n  - {id: m, engine: vllm, bundled: gemma3-270m-q4-k-m}\n", "engine"),
        ("models:\n  - {id: m, engine: llamacpp}\n", "exactly one"),
        ("server: {prot: 1}\nmodels: []\n", "server.prot"),
        ("models: []\n", "models"),
        ("- a\n- b\n", "mapping"),
        ("models: [\n", "not valid YAML"),
        (
            "models:\n  - {id: a, engine: llamacpp, bundled: gemma3-270m-q4-k-m}\n"
            "  - {id: a, engine: llamacpp, bundled: gemma3-270m-q4-k-m}\n",
            "duplicate model ids or deployment names: a",
        ),
        (
            "models:\n  - {id: a, engine: sentence_transformers, bundled: gemma3-270m-q4-k-m}\n",
            "runs on engine 'llamacpp'",
        ),
        (_REMOTE.replace("base_url: http://127.0.0.1:9/v1", "base_url: ftp://x"), "base_url"),
        (_REMOTE.replace("fallbacks: []", "fallbacks: [nope]"), "unknown models: ['nope']"),
        (_REMOTE.replace("name: up", "name: local-g"), "duplicate"),
        (_REMOTE.replace("strategy: weighted", "strategy: fastest"), "strategy"),
        (_REMOTE.replace("model: served", "modle: served"), "deployments.1.modle"),
        (_REMOTE.replace("api_key_env: UP_KEY", "api_key_env: 'not a name'"), "api_key_env"),
        (
            _REMOTE.replace(
                "fallbacks: []", "fallbacks: []\n    complexity_classifier: {embedding_model: up}"
            ),
            "complexity_classifier.embedding_model 'up' is not a local embedding model",
        ),
        (
            _REMOTE.replace(
                "fallbacks: []",
                "fallbacks: []\n    complexity_classifier: {embedding_model: e, large: []}",
            ),
            "complexity_classifier.large",
        ),
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text), env={})
    assert needle in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", env={})
