"""Settings: environment variables plus an optional YAML file, validated at start-up."""

from inferplane.config.settings import (
    ConfigError,
    ModelSpec,
    ServerSettings,
    Settings,
    load_settings,
)

__all__ = ["ConfigError", "ModelSpec", "ServerSettings", "Settings", "load_settings"]
