"""Training data: text → token shard (np.memmap, built once, cached) → deterministic batches, prefetched.

Sources (``TrainConfig.data``):
    * a registry text name (``"calib"``, …) read through `sfcompile.eval.texts.get_text`;
    * a local ``.txt`` file (one text) or ``.jsonl`` file (one document per line, field ``"text"``; documents
      are separated by the tokenizer's EOS token);
    * ``"teacher"``: sequences sampled from the dense teacher (temperature sampling from short prompts drawn
      from the calibration text), generated once and cached as a shard — for users without the pretraining
      corpus.
    * several of the above joined by ``+`` (``"corpus+teacher"``): their shards concatenated, so each part is
      drawn in proportion to its size (``teacher_data_tokens`` sets the teacher's). A path that exists is
      always one part, even if its name holds a ``+``.

Shards live under ``<cache>/shards/<source>-<tokenizer hash>.{bin,json}`` (uint16 when the vocabulary fits,
else uint32), written to a temporary name and renamed, so a crash never leaves a half shard that looks valid.

Order: the shard is cut into non-overlapping windows of ``seqlen`` tokens; sample ``i`` of the run is window
``perm_e[i mod n]`` of epoch ``e = i // n``, ``perm_e`` a permutation seeded by ``(seed, e)``. The batch of
optimizer step ``s``, micro-batch ``k``, rank ``r`` is a pure function of those numbers, so a resumed run (or
another world size with the same global batch) reads exactly the same tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sfcompile.train.sampler import ATTENTIONS


class DataError(ValueError):
    """A data source that cannot be read or is too small; the message says what to do."""


# ---------------------------------------------------------------------------------------------- shards
def tokenizer_hash(tok) -> str:
    """A stable hash of the tokenizer's vocabulary and rules (shards are only valid for one tokenizer)."""
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def cache_root(config) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    if os.environ.get("SFCOMPILE_CACHE"):
        return Path(os.environ["SFCOMPILE_CACHE"])
    if config.out:
        return Path(config.out) / "cache"
    raise DataError("no place to cache token shards: set TrainConfig.out, cache_dir or $SFCOMPILE_CACHE")


def _dtype_for(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def write_shard(path: Path, ids, vocab_size: int, meta: dict) -> Path:
    """Write token ids as a memmap-able .bin with a .json beside it, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = _dtype_for(vocab_size)
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise DataError(f"token ids outside [0, {vocab_size}) while writing {path}")
    tmp = path.with_suffix(f".bin.tmp{os.getpid()}")
    arr.astype(dtype).tofile(tmp)
    os.replace(tmp, path.with_suffix(".bin"))
    info = {**meta, "dtype": np.dtype(dtype).name, "tokens": int(arr.size), "vocab_size": vocab_size}
    tmp_json = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp_json.write_text(json.dumps(info, indent=1))
    os.replace(tmp_json, path.with_suffix(".json"))
    return path


def read_shard(path: Path) -> np.memmap:
    info = json.loads(path.with_suffix(".json").read_text())
    return np.memmap(
        path.with_suffix(".bin"), dtype=np.dtype(info["dtype"]), mode="r", shape=(info["tokens"],)
    )


def _vocab_size(tok) -> int:
    return max(len(tok), int(getattr(tok, "vocab_size", 0) or 0))


def _source_key(source: str) -> str:
    """Cache name of a source: the registry name, or a local file's stem + hash of (path, size, mtime)."""
    path = Path(source).expanduser()
    if not path.is_file():
        return source
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    return f"{path.stem}-{digest}"


def data_parts(data: str) -> list[str]:
    """The sources of ``data``: itself if it is an existing file, else its ``+``-separated parts."""
    if Path(data).expanduser().is_file():
        return [data]
    parts = data.split("+")
    if any(not p.strip() for p in parts):
        raise DataError(
            f'data={data!r} has an empty part; join sources with single "+" signs, e.g. "corpus+teacher"'
        )
    return [p.strip() for p in parts]


def mixture(shards: list[np.ndarray]) -> np.ndarray:
    """The shards as one token array in the given order (one shard is returned as is, still a memmap)."""
    if len(shards) == 1:
        return shards[0]
    return np.concatenate([np.asarray(s) for s in shards])


def _tokenize_documents(tok, docs: list[str]) -> list[int]:
    """Each document tokenized alone, documents separated by EOS (or a blank line if there is none)."""
    sep = (
        [tok.eos_token_id]
        if tok.eos_token_id is not None
        else tok("\n\n", add_special_tokens=False)["input_ids"]
    )
    ids: list[int] = []
    for i in range(0, len(docs), 256):
        for doc_ids in tok(docs[i : i + 256], add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(doc_ids)
            ids.extend(sep)
    return ids


def text_shard(source: str, tok, cache: Path) -> np.memmap:
    """The cached token shard of ``source`` (registry name or local .txt/.jsonl) for ``tok``."""
    from sfcompile.eval.texts import get_text

    th = tokenizer_hash(tok)
    shard = cache / "shards" / f"{_source_key(source)}-{th}"
    if not shard.with_suffix(".json").exists():
        try:
            docs = get_text(source)
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise DataError(
                f'data={source!r}: {err}. Pass a registry text name (e.g. "calib"), a .txt/.jsonl '
                'path, or "teacher"'
            ) from err
        write_shard(
            shard, _tokenize_documents(tok, docs), _vocab_size(tok), {"source": source, "tokenizer": th}
        )
    return read_shard(shard)


# sample_sequences' samplers (TrainConfig.teacher_data_kv_cache); teacher_shard also takes "auto"
KV_CACHES = ("dynamic", "static", "packed", "packed-graph")
TEACHER_SAMPLERS = ("auto",) + KV_CACHES  # what TrainConfig.teacher_data_kv_cache and teacher_shard accept
# "auto" on CUDA: the sampler measured fastest on the H200 (SmolLM2-135M, bf16 teacher, 2048 x 512: packed-graph
# 110.0k tokens/s, packed 87.3k, dynamic 72.8k; benchmarks/README.md, twentieth session). Off CUDA "dynamic".
AUTO_KV_CACHE_CUDA = "packed-graph"
# teacher_shard's decoding attentions (TrainConfig.teacher_data_attention): sample_sequences' and "auto", which
# gives the packed-graph sampler `AUTO_ATTENTION_PACKED_GRAPH` where the kernel takes the teacher's head dim and
# every other sampler "sdpa" (their only one). Measured on the H200 (SmolLM2-135M, bf16, 2048 x 512, 8 windows):
# the Triton kernel 192.9k tokens/s, SDPA 127.8k (benchmarks/README.md, twenty-seventh session).
TEACHER_ATTENTIONS = ("auto",) + ATTENTIONS
AUTO_ATTENTION_PACKED_GRAPH = "triton"


@torch.no_grad()
def sample_sequences(teacher, ids: torch.Tensor, new: int, temperature: float, pad_id, *, kv_cache: str = "dynamic",
                     bf16: bool = False, windows: int | None = None, attention: str = "sdpa"):
    """``ids`` (B x P prompt tokens) continued by exactly ``new`` tokens sampled from ``teacher`` at
    ``temperature`` (no top-k/top-p; EOS is not allowed to end a sequence early).

    ``kv_cache``: ``"dynamic"`` (`generate` with transformers' default KV cache, grown every step),
    ``"static"`` (`generate` with a cache allocated once for the whole length; on CUDA transformers then compiles
    the decoding step, which pays a compile on the first batch of each shape) or ``"packed"``
    (`sfcompile.train.sampler.decode`: no `generate`, one K/V buffer per layer filled in place, grouped query
    heads packed onto their K/V head, the next token drawn on the device; models whose attention does not run
    through transformers' AttentionInterface are refused) or ``"packed-graph"`` (the same, each decoding step
    reading the buffer up to the end of its window under a mask, so that one CUDA graph per window is captured
    and replayed; CUDA only). ``bf16``: sample under bf16 autocast (bf16 matmuls and KV cache). ``windows``:
    the packed samplers' windows (`sfcompile.train.sampler.decode`; default `sampler.GRAPH_WINDOWS`).
    ``attention``: packed-graph's decoding attention, ``"sdpa"`` or ``"triton"`` (`sampler.ATTENTIONS`)."""
    if kv_cache not in KV_CACHES:
        raise DataError(f"kv_cache={kv_cache!r}: choose one of {', '.join(map(repr, KV_CACHES))}")
    if attention != "sdpa" and kv_cache != "packed-graph":
        raise DataError(f"attention={attention!r} is a choice of kv_cache='packed-graph', not {kv_cache!r}")
    teacher_dtype = next(teacher.parameters()).dtype
    if kv_cache == "static" and bf16 and teacher_dtype != torch.bfloat16:
        # measured on the H200 (benchmarks/teacher_sampling.py): the static cache is allocated in the weights'
        # dtype, and the first bf16 key written into it fails in index_copy_
        raise DataError(
            f"teacher data: kv_cache='static' under bf16 autocast needs bf16 teacher weights, not {teacher_dtype}; "
            "use teacher_data_kv_cache='dynamic' (the fastest measured) or teacher_data_precision='fp32'"
        )
    if kv_cache.startswith("packed"):
        from sfcompile.train.sampler import decode, multinomial

        if kv_cache == "packed-graph" and ids.device.type != "cuda":
            raise DataError(f"teacher data: kv_cache='packed-graph' replays a CUDA graph, but the teacher is on "
                            f"{ids.device}; use teacher_data_kv_cache='packed'")
        eos = getattr(getattr(teacher, "generation_config", None), "eos_token_id", None)
        suppress = [i for i in ([pad_id] + (eos if isinstance(eos, list) else [eos])) if i is not None]
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            return decode(teacher, ids, new, multinomial(temperature, suppress),
                          mode="graph" if kv_cache == "packed-graph" else "sliced", windows=windows,
                          attention=attention)
    extra = {"cache_implementation": "static"} if kv_cache == "static" else {}
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        return teacher.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=pad_id,
            **extra,
        )


@torch.no_grad()
def teacher_shard(
    teacher,
    tok,
    cache: Path,
    *,
    n_tokens: int,
    seqlen: int,
    temperature: float,
    seed: int,
    prompt_source: str = "calib",
    prompt_len: int = 4,
    batch: int | Callable[[str], int] = 16,
    device=None,
    kv_cache: str = "dynamic",
    bf16: bool = False,
    attention: str = "sdpa",
    log=None,
) -> np.memmap:
    """Sequences of ``seqlen`` tokens sampled from ``teacher``, cached as a shard.

    Each sequence starts with BOS (if the tokenizer has one) and ``prompt_len`` tokens taken at a random
    position of ``prompt_source``; the rest is sampled at ``temperature`` (no top-k/top-p), EOS suppressed so
    every sequence has the full length. ``kv_cache``, ``bf16``, ``attention``: as `sample_sequences`, and
    ``attention="auto"``: the sampler's best measured (`TEACHER_ATTENTIONS`; where the kernel cannot take the
    teacher the log says why), and ``kv_cache="auto"``:
    on CUDA `AUTO_KV_CACHE_CUDA` (``"dynamic"`` for a teacher offloaded to the CPU), unless the packed sampler
    refuses the teacher (its attention is one the sampler does not apply, `sfcompile.train.sampler.SamplerError`,
    raised on the first batch before anything is kept): then ``"dynamic"``; off CUDA ``"dynamic"``. ``log`` (a
    callable taking a line) is told of every such switch (without one: a warning) and of the sampling's speed.
    ``batch``: sequences sampled at once, or a callable giving it for the sampler about to run (the trainer's
    ``teacher_data_batch="auto"``: `generate`'s caches peak at about twice the packed sampler's K/V bytes, so a
    fallback to ``"dynamic"`` samples half as many at once).
    The cache key includes the teacher's name, n_tokens, seqlen, temperature, seed, batch, both sampling
    options as resolved (they change the samples) and the prompt text's tokens, not its path: runs that share a
    cache and hold the same text under different paths share the samples.
    """
    th = tokenizer_hash(tok)
    name = str(getattr(getattr(teacher, "config", None), "name_or_path", "") or type(teacher).__name__)
    prompts_pool = text_shard(prompt_source, tok, cache)
    prompts_digest = hashlib.sha256(np.ascontiguousarray(prompts_pool).tobytes()).hexdigest()
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    if kv_cache == "auto":
        candidates, why = _auto_samplers(device, teacher)
        if why:
            _say(log, f"teacher data: kv_cache='auto' samples with {candidates[0]!r}: {why}")
    elif kv_cache in TEACHER_SAMPLERS:
        candidates = [kv_cache]
    else:
        raise DataError(f"kv_cache={kv_cache!r}: choose 'auto' or one of {', '.join(map(repr, KV_CACHES))}")

    def batch_of(sampler: str) -> int:
        return batch(sampler) if callable(batch) else batch

    if attention not in TEACHER_ATTENTIONS:
        raise DataError(f"attention={attention!r}: choose one of {', '.join(map(repr, TEACHER_ATTENTIONS))}")
    attention_of = {sampler: _attention_for(sampler, attention, teacher, device) for sampler in candidates}

    def shard_for(sampler: str, attn: str) -> Path:
        key = f"{name}:{n_tokens}:{seqlen}:{temperature}:{seed}:{prompts_digest}:{batch_of(sampler)}:{sampler}:{bf16}"
        if attn != "sdpa":  # (so that shards sampled before the option keep their keys)
            key += f":{attn}"
        key = hashlib.sha256(key.encode()).hexdigest()[:12]
        return cache / "shards" / f"teacher-{key}-{th}"

    # a shard an earlier run sampled: a resumed "auto" run finds its own choice, and an attention="auto" run also
    # takes samples drawn with SDPA (the same distribution) before "auto" chose the kernel: a run resumed across
    # that change reads the data it started with
    for sampler in candidates:
        for attn in dict.fromkeys([attention_of[sampler][0]] + (["sdpa"] if attention == "auto" else [])):
            if shard_for(sampler, attn).with_suffix(".json").exists():
                return read_shard(shard_for(sampler, attn))
    from sfcompile.train.sampler import SamplerError

    for i, sampler in enumerate(candidates):
        attn, why = attention_of[sampler]
        if why:
            _say(log, f"teacher data: attention='auto' decodes with {attn!r}: {why}")
        start = time.perf_counter()
        try:
            out = _sample_teacher(teacher, tok, prompts_pool, n_tokens=n_tokens, seqlen=seqlen,
                                  temperature=temperature, seed=seed, prompt_len=prompt_len, batch=batch_of(sampler),
                                  device=device, kv_cache=sampler, bf16=bf16, attention=attn)
        except SamplerError as err:
            if i + 1 == len(candidates):
                raise
            _say(log, f"teacher data: kv_cache='auto' chose {sampler!r}, which refused the teacher ({err}); "
                      f"sampling with {candidates[i + 1]!r}")
            continue
        break
    seconds = time.perf_counter() - start
    if log is not None:
        how = f" (attention {attn!r})" if sampler == "packed-graph" else ""
        log(f"teacher data: {len(out):,} tokens sampled with kv_cache={sampler!r}{how}, {batch_of(sampler)} sequences "
            f"at once, in {seconds:.0f} s ({len(out) / max(seconds, 1e-9):,.0f} tokens/s)")
    shard = shard_for(sampler, attn)
    write_shard(
        shard,
        out,
        _vocab_size(tok),
        {
            "source": "teacher",
            "teacher": name,
            "tokenizer": th,
            "temperature": temperature,
            "seqlen": seqlen,
            "seed": seed,
            "kv_cache": sampler,
            "bf16": bf16,
            "attention": attn,
            "batch": batch_of(sampler),
        },
    )
    return read_shard(shard)


def _auto_samplers(device: torch.device, teacher) -> tuple[list[str], str | None]:
    """``kv_cache="auto"``'s samplers for ``teacher`` on ``device``, in the order tried, and why the first is not
    `AUTO_KV_CACHE_CUDA` where that needs saying: a teacher whose blocks live off the device (``teacher=
    "offload"``: each block copied in by a hook) is sampled with `generate`, as a CUDA graph replays no hooks."""
    if device.type != "cuda":
        return ["dynamic"], None
    tensors = list(teacher.parameters()) + list(teacher.buffers())
    if any(t.device.type != "cuda" for t in tensors):
        return ["dynamic"], "the teacher's weights are partly off the GPU (offloaded) and a CUDA graph replays no hooks"
    return [AUTO_KV_CACHE_CUDA, "dynamic"], None


def _attention_for(sampler: str, attention: str, teacher, device: torch.device) -> tuple[str, str | None]:
    """The decoding attention ``sampler`` runs for ``attention`` (``"auto"`` resolved, `TEACHER_ATTENTIONS`), and
    why ``"auto"`` did not give the packed-graph sampler `AUTO_ATTENTION_PACKED_GRAPH` where that needs saying:
    a GPU older than Ampere (the trainer samples in bf16, whose dots need compute capability 8.0; the kernel was
    only measured on Hopper), or a head dim the kernel cannot take."""
    if attention != "auto":
        return attention, None
    if sampler != "packed-graph":
        return "sdpa", None  # the other samplers have no other
    from sfcompile.train.decode_attention_kernel import supports_head_dim

    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if capability is not None and capability < (8, 0):
        return "sdpa", (f"the Triton kernel needs a GPU of compute capability 8.0 or later (Ampere), this one is "
                        f"{capability[0]}.{capability[1]}")
    d = _head_dim(teacher)
    if d is None:
        return "sdpa", "the teacher's config gives no head dim (head_dim, or hidden_size / num_attention_heads)"
    if not supports_head_dim(d):
        return "sdpa", f"the teacher's heads have {d} dims and the Triton kernel takes a power of 2 >= 16"
    return AUTO_ATTENTION_PACKED_GRAPH, None


def _head_dim(model) -> int | None:
    """The attention head size its (text) config states (`plan.head_dim`), or None where it states none."""
    from sfcompile.train.plan import head_dim

    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        return head_dim(config)
    except (AttributeError, TypeError, ZeroDivisionError):
        return None


def _say(log, line: str) -> None:
    """A line for the run's log, or a warning where there is no log: a sampler switch is never quiet."""
    if log is None:
        warnings.warn(line, stacklevel=3)
    else:
        log(line)


def _sample_teacher(teacher, tok, prompts_pool, *, n_tokens, seqlen, temperature, seed, prompt_len, batch, device,
                    kv_cache, bf16, attention="sdpa") -> list[int]:
    """`teacher_shard`'s tokens with one sampler: the prompts and seeds depend only on ``seed``."""
    rng = np.random.default_rng([seed, 7])
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    n_seq = max(1, -(-n_tokens // seqlen))
    out: list[int] = []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, n_seq, batch):
        b = min(batch, n_seq - start)
        rows = []
        for _ in range(b):
            p = int(rng.integers(0, len(prompts_pool) - prompt_len))
            rows.append(bos + [int(t) for t in prompts_pool[p : p + prompt_len]])
        ids = torch.tensor(rows, device=device)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seqs = sample_sequences(
            teacher, ids, seqlen - ids.shape[1], temperature, tok.eos_token_id, kv_cache=kv_cache, bf16=bf16,
            attention=attention,
        )
        out.extend(seqs[:, :seqlen].reshape(-1).tolist())
    return out


# ---------------------------------------------------------------------------------------------- batches
@dataclass
class Batches:
    """Deterministic batches over a token shard (see the module docstring for the order)."""

    tokens: np.ndarray
    seqlen: int
    micro_batch: int
    grad_accum: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        self.n_windows = len(self.tokens) // self.seqlen
        if self.n_windows < 1:
            raise DataError(
                f"the data has {len(self.tokens)} tokens, fewer than one window of seqlen="
                f"{self.seqlen}; use a larger text or a smaller seqlen"
            )
        self._perms: dict[int, np.ndarray] = {}

    def _window(self, sample: int) -> int:
        epoch, j = divmod(sample, self.n_windows)
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perms = {epoch: perm}  # keep one epoch's permutation
        return int(perm[j])

    def micro(self, step: int, k: int) -> torch.Tensor:
        """Micro-batch ``k`` of optimizer step ``step`` for this rank: (micro_batch, seqlen) int64."""
        first = ((step * self.grad_accum + k) * self.world_size + self.rank) * self.micro_batch
        rows = []
        for i in range(first, first + self.micro_batch):
            w = self._window(i)
            rows.append(np.asarray(self.tokens[w * self.seqlen : (w + 1) * self.seqlen], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))

    def step(self, step: int) -> list[torch.Tensor]:
        return [self.micro(step, k) for k in range(self.grad_accum)]

    def epochs(self, steps: int) -> float:
        return steps * self.grad_accum * self.world_size * self.micro_batch / self.n_windows


class Prefetcher:
    """Builds the batches of steps ``start..end-1`` on a background thread, ``depth`` steps ahead.

    Iterating yields ``(step, [micro-batches])`` in order. ``pin`` pins host memory for async copies to CUDA.
    """

    def __init__(self, batches: Batches, start: int, end: int, depth: int = 2, pin: bool = False):
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(batches, start, end, pin), daemon=True, name="sfcompile-prefetch"
        )
        self._thread.start()

    def _work(self, batches: Batches, start: int, end: int, pin: bool) -> None:
        try:
            for s in range(start, end):
                micro = batches.step(s)
                if pin:
                    micro = [m.pin_memory() for m in micro]
                while not self._stop.is_set():
                    try:
                        self._q.put((s, micro), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(None)
        except BaseException as err:  # surface the error in the consumer, never hang it
            self._q.put(err)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def byte_tokenizer():
    """A byte-level tokenizer that needs no files (257 ids: the 256 byte symbols and ``<eos>``): for tests and
    speed benchmarks on random-weight models, where no model's own tokenizer is at hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<eos>")
