"""Stage 2: one shared transformer base per base id, one peft LoRA adapter (plus its own head) per filter.

Why per-adapter heads swapped in, rather than peft's ``modules_to_save`` copies: filters have different
numbers of dimensions, and peft keeps one copy of the head per adapter *with the base head's shape*, so
adapters with 3 and 8 outputs cannot both load onto one base. Padding every head to the widest filter
would tie the base to whichever filters happen to be registered (a wider one arriving on hot reload
would force a reload of all). Instead the LoRA weights go into one ``PeftModel`` per base (switched
with ``set_adapter``) and each filter's head is a plain ``nn.Linear`` of its own width that is put in
the head's place (``score`` for decoder models, ``classifier`` for encoders) for that filter's
forward pass. The model's own forward then does the architecture-specific pooling (last non-pad token
for Gemma, [CLS] pooler for BERT), so outputs equal those of the filter's model loaded on its own.

Padding is on the right and the base's ``pad_token_id`` is the tokenizer's, so decoder models pool the
last real token and positions do not depend on the batch: batched results equal one-at-a-time results.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from scoring.exceptions import ModelFilesMissingError, ModelLoadError, PackageError
from scoring.gguf import is_gguf_ref, resolve_gguf
from scoring.models import dtype_for, hub_offline, load_error, model_revision, pad_batch, resolve_model_ref
from scoring.package import FilterPackage
from scoring.text import encode_head_tail

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_NAMES = ("score", "classifier")
# peft prefixes saved keys with the PeftModel's path to the wrapped model.
_SAVED_PREFIX = "base_model.model."


def pad_id_of(tokenizer: Any) -> int:
    """The id to right-pad with; models without a pad token pad with end-of-sequence."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ModelLoadError("the tokenizer has neither a pad nor an end-of-sequence token")


def model_max_length(model_config: Any, tokenizer: Any, wanted: int) -> int:
    """``wanted`` capped by the position table and the tokenizer's declared limit (when real)."""
    limit = wanted
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions:
        limit = min(limit, int(positions))
    declared = getattr(tokenizer, "model_max_length", None)
    if declared and declared < 1_000_000:  # tokenizers without a limit declare ~1e30
        limit = min(limit, int(declared))
    return limit


def head_name(model: nn.Module) -> str:
    """Attribute name of a sequence-classification model's output layer."""
    for name in HEAD_NAMES:
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    raise ModelLoadError(f"{type(model).__name__} has no linear output layer named {' or '.join(HEAD_NAMES)}")


def resolve_base(base_ref: str) -> str:
    """The local path or hub id a stage-2 ``base_model`` loads from.

    A ``gguf:`` id or ``.gguf`` file is converted once into the user's cache (:mod:`scoring.gguf`) and
    its directory returned; anything else goes through :func:`scoring.models.resolve_model_ref`.
    """
    if is_gguf_ref(base_ref):
        return str(resolve_gguf(base_ref))
    return resolve_model_ref(base_ref)


def base_revision(base_ref: str) -> str:
    """:func:`scoring.models.model_revision` of what ``base_ref`` loads from. For a GGUF base that is the
    converted directory, whose ``gguf_source.json`` (hashed with the weights) names the GGUF's sha256."""
    return model_revision(resolve_base(base_ref) if is_gguf_ref(base_ref) else base_ref)


def load_base(base_ref: str, *, num_labels: int, dtype: torch.dtype,
              problem_type: str | None = None) -> tuple[Any, Any, int]:
    """Tokenizer, sequence-classification model and pad id of a student base: the one loader serving
    (:class:`StudentPool`) and training (``training.student``) share, so both read a base the same way.

    ``base_ref`` is a hub id, a local path (``resolve_model_ref``; offline, hub ids must be cached) or a
    GGUF base (``gguf:gemma3-270m-q4-k-m``, a ``.gguf`` file; :func:`resolve_base`).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_base(base_ref)
    verbosity = hf_logging.get_verbosity()
    # The base's own head is replaced (serving: each adapter brings its own; training: a new one), so the
    # "newly initialised weights" report transformers prints on load is noise here.
    hf_logging.set_verbosity_error()
    extra = {"problem_type": problem_type} if problem_type else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=hub_offline())
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, dtype=dtype, local_files_only=hub_offline(), **extra)
    except Exception as exc:
        # A GGUF base failing here was converted already: the converted directory is what could not be read.
        raise load_error(path if is_gguf_ref(base_ref) else base_ref, "stage-2 base model", exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    pad = pad_id_of(tokenizer)
    model.config.pad_token_id = pad
    return tokenizer, model, pad


def split_adapter_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                                  dict[str, torch.Tensor]]:
    """(LoRA weights, head weights keyed ``weight``/``bias``) of a saved SEQ_CLS adapter."""
    lora: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        inner = key.removeprefix(_SAVED_PREFIX)
        owner, _, param = inner.rpartition(".")
        if owner in HEAD_NAMES:
            head[param] = value
        else:
            lora[key] = value
    return lora, head


@dataclass
class _Adapter:
    package: FilterPackage
    name: str  # peft adapter name: module names cannot hold the dots of "name@1.0.0"
    head: nn.Linear
    max_length: int

    @property
    def n_dims(self) -> int:
        return int(self.head.out_features)


@dataclass
class _Base:
    ref: str
    model: Any  # peft.PeftModel around an AutoModelForSequenceClassification
    tokenizer: Any
    pad_id: int
    head_attr: str
    revision: str  # scoring.models.model_revision of the files loaded, for the records' provenance
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: dict[str, _Adapter] = field(default_factory=dict)


class StudentPool:
    """All stage-2 students of a process: bases loaded once, adapters swapped per filter."""

    def __init__(self, device: str = "cpu", batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype_for(device)
        self._bases: dict[str, _Base] = {}
        self._where: dict[str, str] = {}  # filter ref -> base ref
        self._hash: dict[str, str] = {}
        self._serial = 0
        self._lock = threading.RLock()

    @property
    def refs(self) -> list[str]:
        return sorted(self._where)

    def __contains__(self, ref: object) -> bool:
        return ref in self._where

    def dimensions(self, ref: str) -> list[str]:
        return self._adapter(ref)[1].package.config.dimension_names

    def revision(self, ref: str) -> str:
        """What the base of filter ``ref`` was loaded from (``rev:<commit>`` or ``sha256:<hash>``)."""
        return self._adapter(ref)[0].revision

    def register(self, package: FilterPackage) -> None:
        """Load ``package``'s adapter (and its base, once); a no-op when already loaded unchanged."""
        stage2 = package.config.stage2
        if stage2 is None:
            raise PackageError(f"filter {package.ref} has no stage2 section", filter=package.ref,
                               path=str(package.path))
        with self._lock:
            if package.ref in self._where:
                if self._hash.get(package.ref) == package.package_hash:
                    return
                self.unregister(package.ref)
            adapter_dir = package.file(stage2.adapter)
            missing = [str(adapter_dir / n) for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
                       if not (adapter_dir / n).is_file()]
            if missing:
                raise ModelFilesMissingError(
                    f"filter {package.ref}: adapter files missing ({', '.join(missing)}); "
                    "train it with `fluxscore train`", missing=missing, filter=package.ref,
                    path=str(package.path))
            base = self._base(stage2.base_model)
            try:
                adapter = self._load_adapter(base, package, adapter_dir)
            except Exception:
                if not base.adapters:
                    self._bases.pop(base.ref, None)
                raise
            base.adapters[package.ref] = adapter
            self._where[package.ref] = base.ref
            self._hash[package.ref] = package.package_hash

    def unregister(self, ref: str) -> None:
        """Drop a filter's adapter; the base goes too once no adapter uses it."""
        with self._lock:
            base_ref = self._where.pop(ref, None)
            self._hash.pop(ref, None)
            if base_ref is None:
                return
            base = self._bases[base_ref]
            with base.lock:
                gone = base.adapters.pop(ref).name
                if not base.adapters:
                    del self._bases[base_ref]
                    return
                if base.model.active_adapter == gone:
                    base.model.set_adapter(next(iter(base.adapters.values())).name)
                base.model.delete_adapter(gone)

    def predict(self, ref: str, texts: Sequence[str]) -> np.ndarray:
        """(n, n_dims) float64 raw scores of filter ``ref`` for ``texts``."""
        base, adapter = self._adapter(ref)
        out = np.zeros((len(texts), adapter.n_dims), dtype=np.float64)
        if not texts:
            return out
        prep = adapter.package.config.preprocessing
        ids = encode_head_tail(base.tokenizer, texts, head=prep.head_tokens, tail=prep.tail_tokens,
                               max_length=adapter.max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with base.lock, torch.inference_mode():
            base.model.set_adapter(adapter.name)
            inner = base.model.get_base_model()
            setattr(inner, base.head_attr, adapter.head)
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                input_ids, mask = pad_batch([ids[i] for i in chunk], base.pad_id, self.device)
                logits = base.model(input_ids=input_ids, attention_mask=mask).logits
                out[chunk] = logits.float().cpu().numpy()
        return out

    def predict_many(self, items: Sequence[tuple[str, str]]) -> list[np.ndarray]:
        """Score (ref, text) pairs, one adapter switch per filter; rows come back in input order."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (ref, _) in enumerate(items):
            groups[ref].append(i)
        rows: list[np.ndarray | None] = [None] * len(items)
        for ref, positions in groups.items():
            scores = self.predict(ref, [items[i][1] for i in positions])
            for row, i in zip(scores, positions, strict=True):
                rows[i] = row
        return [r for r in rows if r is not None]

    def _adapter(self, ref: str) -> tuple[_Base, _Adapter]:
        with self._lock:
            base_ref = self._where.get(ref)
            if base_ref is None:
                raise KeyError(f"no student registered for filter {ref!r} (have: {', '.join(self.refs)})")
            base = self._bases[base_ref]
            return base, base.adapters[ref]

    def _base(self, base_ref: str) -> _Base:
        base = self._bases.get(base_ref)
        if base is not None:
            return base
        tokenizer, model, pad = load_base(base_ref, num_labels=1, dtype=self.dtype)
        model.to(self.device).eval()
        # Once per base and process, at load (a 1B base is 2 GB to hash): every stage-2 record reuses it.
        base = _Base(ref=base_ref, model=model, tokenizer=tokenizer, pad_id=pad, head_attr=head_name(model),
                     revision=base_revision(base_ref))
        self._bases[base_ref] = base
        return base

    def _load_adapter(self, base: _Base, package: FilterPackage, adapter_dir: Path) -> _Adapter:
        from peft import LoraConfig, PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file

        ref = package.ref
        self._serial += 1
        name = f"filter{self._serial}"
        try:
            raw = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
            for key in ("modules_to_save", "task_type", "base_model_name_or_path", "revision"):
                raw.pop(key, None)
            known = LoraConfig.__dataclass_fields__
            config = LoraConfig(**{k: v for k, v in raw.items() if k in known})
            config.inference_mode = True
            lora, head_state = split_adapter_state(load_file(str(adapter_dir / ADAPTER_WEIGHTS)))
        except Exception as exc:
            raise ModelLoadError(f"filter {ref}: cannot read the LoRA adapter in {adapter_dir}: {exc}",
                                 filter=ref) from exc
        if "weight" not in head_state:
            raise ModelLoadError(f"filter {ref}: adapter {adapter_dir} holds no output head "
                                 f"({'/'.join(HEAD_NAMES)}); train it with task_type SEQ_CLS", filter=ref)
        n_dims = len(package.config.dimensions)
        weight = head_state["weight"]
        hidden = base.model.config.get_text_config().hidden_size
        if weight.shape != (n_dims, hidden):
            raise ModelLoadError(f"filter {ref}: adapter head has shape {tuple(weight.shape)}, expected "
                                 f"({n_dims} dimensions, hidden size {hidden} of {base.ref})", filter=ref)
        head = nn.Linear(hidden, n_dims, bias="bias" in head_state)
        head.load_state_dict(head_state)
        head.to(device=self.device, dtype=self.dtype).eval()
        with base.lock:
            try:
                if not isinstance(base.model, PeftModel):
                    base.model = PeftModel(base.model, config, adapter_name=name)
                else:
                    base.model.add_adapter(name, config)
                result: Any = set_peft_model_state_dict(base.model, lora, adapter_name=name)
                unexpected = list(result.unexpected_keys)
                # A LoRA weight left out would silently stay at its initial value (B = 0).
                missing = [k for k in result.missing_keys if f".{name}." in k]
                if unexpected or missing:
                    raise ValueError(f"unexpected adapter weights {unexpected[:3]}, missing {missing[:3]}")
                base.model.to(device=self.device, dtype=self.dtype).eval()
            except Exception as exc:
                # peft cannot delete a model's only adapter; register() then drops the whole base.
                if (isinstance(base.model, PeftModel) and name in base.model.peft_config
                        and len(base.model.peft_config) > 1):
                    base.model.delete_adapter(name)
                raise ModelLoadError(f"filter {ref}: adapter {adapter_dir} does not fit base "
                                     f"{base.ref}: {exc}", filter=ref) from exc
        stage2 = package.config.stage2
        assert stage2 is not None
        return _Adapter(package=package, name=name, head=head,
                        max_length=model_max_length(base.model.config, base.tokenizer, stage2.max_length))
