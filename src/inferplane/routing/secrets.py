"""Provider secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with one key per install.

The key comes from INFERPLANE_SECRET_KEY (a Fernet key: 32 url-safe base64 bytes; give
every replica the same) or, when unset, from `secret.key` in the data dir, created on
first start with mode 0600.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from inferplane.config import ConfigError


class SecretBox:
    def __init__(self, key: bytes):
        try:
            self._fernet = Fernet(key)
        except ValueError as exc:
            raise ConfigError("INFERPLANE_SECRET_KEY is not a valid Fernet key") from exc
        # Names this installation in the loop-protection header (`x-inferplane-via`):
        # replicas share the key, so they share the name; it reveals nothing of the key.
        self.installation_id = hashlib.sha256(b"inferplane-via\x00" + key).hexdigest()[:16]

    @classmethod
    def open(cls, data_dir: Path, env_key: str | None) -> SecretBox:
        if env_key:
            return cls(env_key.encode())
        path = data_dir / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open_sealed(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError("a stored secret cannot be decrypted with this key") from exc
