"""What ``models_dir`` holds, and which file or folder a request's ``model`` names.

A model is a ``.gguf`` file (loose at the top, or in a folder of its own) or a Hugging
Face folder (``config.json`` plus weights). Names are paths relative to ``models_dir``
(``qwen/qwen-q4_k_m.gguf``, ``tiny-llama``); XandRouting clients write them with the
``path_prefix`` in front (``/models/qwen/qwen-q4_k_m.gguf``). Hidden entries (``.downloads``,
where downloads are staged) are never models, so a model appears only once complete.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from router import InvalidRequest, ModelNotFound, shown

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
#: XandRouting's quantization tag in a GGUF file name (Q4_K_M, Q8_0, IQ4_XS).
QUANTIZATION = re.compile(r"[-_.](I?Q\d+_K_[SML]|Q\d+_K|Q\d+_[01]|IQ\d+_[A-Z]+|F16|BF16|F32)\.gguf$", re.IGNORECASE)
CONFIG_METADATA = ("model_type", "architectures", "num_hidden_layers", "hidden_size", "vocab_size",
                   "max_position_embeddings")
SKIPPED = {"README.md", "LICENSE", "LICENSE.md", "LICENSE.txt"}


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """One model on disk: ``name`` (relative to models_dir), ``path`` (absolute),
    ``kind`` (``gguf`` or ``transformers``)."""

    name: str
    path: Path
    kind: str

    def size_bytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file() and not _hidden(f, self.path))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(next(path.glob(p), None) for p in WEIGHT_PATTERNS)


def scan(root: Path) -> list[ModelFile]:
    """Every model below ``root``: loose ``.gguf`` files at the top, each ``.gguf`` in a
    top-level folder, and top-level Hugging Face folders. Sorted by name."""
    found: list[ModelFile] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix == ".gguf":
            found.append(ModelFile(entry.name, entry, "gguf"))
        elif entry.is_dir():
            if is_hf_folder(entry):
                found.append(ModelFile(entry.name, entry, "transformers"))
            for gguf in sorted(entry.rglob("*.gguf")):
                if not _hidden(gguf, root):
                    found.append(ModelFile(gguf.relative_to(root).as_posix(), gguf, "gguf"))
    return found


def resolve(root: Path, model: str, path_prefix: str) -> ModelFile:
    """The model a request names: a path relative to ``root``, or the same path with
    ``path_prefix`` in front. A folder holding exactly one ``.gguf`` names that file.
    Raises ``ModelNotFound``, or ``InvalidRequest`` for a path that leaves ``root``."""
    name = model
    prefix = path_prefix.rstrip("/")
    if prefix and (name == prefix or name.startswith(prefix + "/")):
        name = name[len(prefix):]
    name = name.lstrip("/")
    pure = PurePosixPath(name)
    if not name or ".." in pure.parts or any(p.startswith(".") for p in pure.parts):
        raise InvalidRequest(f"model {shown(model)} is not a path inside the models folder", param="model")
    path = (root / pure).resolve()
    base = root.resolve()
    if path != base and base not in path.parents:
        raise InvalidRequest(f"model {shown(model)} leaves the models folder", param="model")
    if path.is_file() and path.suffix == ".gguf":
        return ModelFile(pure.as_posix(), path, "gguf")
    if path.is_dir():
        if is_hf_folder(path):
            return ModelFile(pure.as_posix(), path, "transformers")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelFile((pure / ggufs[0].name).as_posix(), ggufs[0], "gguf")
        if ggufs:
            names = ", ".join(g.name for g in ggufs)
            raise ModelNotFound(f"model {shown(model)} is a folder with several .gguf files ({names}): "
                                "name one of them", param="model")
    raise ModelNotFound(f"model {shown(model)} is not in the models folder (a .gguf file, or a folder "
                        "with config.json and weights); GET /v1/models/inventory lists what is there",
                        param="model")


def quantization(filename: str) -> str | None:
    match = QUANTIZATION.search(filename)
    return match.group(1).upper() if match else None


def _file_type(path: Path) -> str:
    return path.suffix.lstrip(".") or "file"


def _config_metadata(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: config.get(k) for k in CONFIG_METADATA} if isinstance(config, dict) else None


def _describe_files(files: list[Path], prefix: str, root: Path) -> list[dict[str, Any]]:
    out = []
    for f in files:
        size = f.stat().st_size
        out.append({"path": f"{prefix}/{f.relative_to(root).as_posix()}", "filename": f.name,
                    "size_bytes": size, "size_mb": round(size / 2**20, 2), "size_gb": round(size / 2**30, 2),
                    "file_type": _file_type(f), "quantization": quantization(f.name) if f.suffix == ".gguf" else None})
    return out


def inventory(root: Path, path_prefix: str) -> dict[str, Any]:
    """``GET /v1/models/inventory`` (XandRouting's shape): each top-level folder and each
    loose ``.gguf`` file of ``root``."""
    prefix = path_prefix.rstrip("/")
    models: list[dict[str, Any]] = []
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or entry.name in SKIPPED:
                continue
            if entry.is_file():
                if entry.suffix != ".gguf":
                    continue
                files = [entry]
                model_type = "gguf"
                has_config = False
            elif entry.is_dir():
                files = sorted(f for f in entry.rglob("*") if f.is_file() and not _hidden(f, root)
                               and f.name not in SKIPPED)
                has_config = (entry / "config.json").is_file()
                if any(f.suffix == ".gguf" for f in files):
                    model_type = "gguf"
                elif is_hf_folder(entry):
                    model_type = "transformers"
                else:
                    model_type = "unknown"
            else:
                continue
            total = sum(f.stat().st_size for f in files)
            recommended = {"gguf": ["llamacpp"], "transformers": ["transformers", "vllm"]}.get(model_type, ["transformers"])
            models.append({
                "model_name": entry.stem if entry.is_file() else entry.name,
                "model_path": f"{prefix}/{entry.name}",
                "total_size_bytes": total, "total_size_gb": round(total / 2**30, 2),
                "file_count": len(files), "model_type": model_type, "recommended_backend": recommended,
                "has_config": has_config,
                "config_metadata": _config_metadata(entry) if has_config else None,
                "files": _describe_files(files, prefix, root),
            })
    total_gb = round(sum(m["total_size_bytes"] for m in models) / 2**30, 2)
    return {"models": models, "total_models": len(models), "total_size_gb": total_gb}
