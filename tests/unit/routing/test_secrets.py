from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from inferplane.config import ConfigError
from inferplane.routing.secrets import SecretBox


def test_a_generated_key_is_private_and_reused(tmp_path: Path) -> None:
    box = SecretBox.open(tmp_path, None)
    token = box.seal("sk-provider-secret")
    assert "sk-provider-secret" not in token
    key_file = tmp_path / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox.open(tmp_path, None).open_sealed(token) == "sk-provider-secret"


def test_an_explicit_key_wins_and_a_wrong_one_fails_clearly(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    token = SecretBox.open(tmp_path, key).seal("s")
    assert not (tmp_path / "secret.key").exists()
    assert SecretBox.open(tmp_path, key).open_sealed(token) == "s"
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        SecretBox.open(tmp_path, Fernet.generate_key().decode()).open_sealed(token)
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        SecretBox.open(tmp_path, "short")
