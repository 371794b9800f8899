from __future__ import annotations

from pathlib import Path

from inferplane.config import ModelSpec
from inferplane.config.routes import RemoteDeployment
from inferplane.routing.secrets import SecretBox
from inferplane.routing.store import DeploymentStore, RuntimeDeployment
from inferplane.store.database import open_database, sqlite_url


def _store(tmp_path: Path) -> DeploymentStore:
    return DeploymentStore(open_database(sqlite_url(tmp_path)), SecretBox.open(tmp_path, None))


def test_remote_and_local_deployments_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    remote = RemoteDeployment(
        name="r", engine="openai_compatible", base_url="http://127.0.0.1:1/v1", model="m"
    )
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    local = ModelSpec(id="l", engine="llamacpp", path=gguf, parallel=4, listed=False)
    store.put(RuntimeDeployment("chat", remote, "sk-secret"))
    store.put(RuntimeDeployment("chat", local))
    got = {d.name: d for d in store.all()}
    assert got["r"] == RuntimeDeployment("chat", remote, "sk-secret")
    assert got["l"] == RuntimeDeployment("chat", local, None)
    assert store.exists("l") and not store.exists("nope")


def test_a_stored_local_deployment_whose_file_has_gone_is_left_out(tmp_path: Path) -> None:
    store = _store(tmp_path)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    store.put(RuntimeDeployment("chat", ModelSpec(id="l", engine="llamacpp", path=gguf)))
    gguf.unlink()
    assert store.all() == []
    assert store.exists("l")  # still there to be deleted
    assert store.delete("l") and not store.exists("l")
