"""End to end: decode tokens/s and prefill latency, dense Inductor vs the `sparseforge` backend.

Both sides run the same HF model class with a static KV cache and CUDA graphs:

* dense:       ``torch.compile(step, mode="reduce-overhead")``           (default Inductor + CUDA graphs)
* sparseforge: ``torch.compile(step, backend="sparseforge", mode="reduce-overhead")`` on the model hardened
               to the pattern (every discovered site; ``lm_head`` and embeddings stay dense, as in `harden`).

Weights are random (weight values do not change speed); the hardened pattern is the magnitude projection
of those random weights, so 2:4 positions and block-16 tiles are spread as they are in a pruned model.
``--layers`` builds the model with fewer decoder layers than the real one (stated in every row; nothing is
scaled): decoder layers are identical, so fewer layers change compile time, not the per-layer speed, but
the dense ``lm_head`` weighs relatively more, which lowers the end-to-end ratio.

One decode step is ``model(token, cache_position=p, past_key_values=static_cache, logits_to_keep=1)``
then greedy argmax, compiled as one graph (gpt-fast style). The cache is filled by an eager prefill of a
short prompt first; the timed loop runs ``--new-tokens`` steps between CUDA events. Prefill latency is
the median of compiled forwards over ``--prefill`` tokens (batch 1). Each row also records how far the
compiled step's logits are from eager on the same cache state, and the weight bytes the graph reads.

Usage::

    python benchmarks/e2e.py --model llama-2-7b --layers 8 --e2e-patterns 2:4,block16 --batches 1,8 \
        --new-tokens 256 --prefill 2048 --e2e-out results/e2e-llama
    python benchmarks/e2e.py --model qwen3-8b --e2e-patterns 2:4+nopdl,2:4,dense+pdl --batches 1 --prefill 0
    sfcompile bench --e2e --model llama-2-7b ...            # the same, through the CLI

Needs CUDA for meaningful numbers; ``--device cpu`` runs the same code on a tiny config (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            vocab_size=256)


@dataclass
class Row:
    model: str
    layers: int
    pattern: str                  # "dense" or the hardened pattern
    batch: int
    decode_ms_per_step: float | None = None
    decode_tok_s: float | None = None
    prefill_ms: float | None = None
    packed_ops: int | None = None
    site_bytes: int | None = None      # dense bytes of the lowered sites
    packed_bytes: int | None = None    # what the compiled graph holds for them
    weight_bytes: int | None = None    # every weight the model reads (dense rest + packed sites)
    logit_err: float | None = None     # max |compiled - eager| / max |eager| on the first decode step
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class E2EConfig:
    """What to measure (parsed once from the command line)."""

    models: tuple[str, ...] = ("llama-2-7b",)
    layers: int | None = None
    patterns: tuple[str, ...] = ("2:4", "block16")
    batches: tuple[int, ...] = (1, 8)
    new_tokens: int = 256
    prefill: int = 2048
    prefill_patterns: tuple[str, ...] = ("2:4", "block16")
    dtype: str = "bfloat16"
    device: str = "cuda"
    budget_s: float = 0.0
    out: Path | None = None
    profile: Path | None = None        # per (model, column, batch): a kernel table of profiled decode steps
    profile_steps: int = 8

    @classmethod
    def from_args(cls, args) -> E2EConfig:
        def items(text):
            return tuple(x.strip() for x in text.split(",") if x.strip())

        return cls(models=items(args.model), layers=args.layers, patterns=items(args.e2e_patterns),
                   batches=tuple(int(b) for b in items(args.batches)), new_tokens=args.new_tokens,
                   prefill=args.prefill, prefill_patterns=items(args.prefill_patterns), dtype=args.dtype,
                   device=args.device, budget_s=args.budget_s, out=args.e2e_out, profile=args.e2e_profile,
                   profile_steps=args.e2e_profile_steps)


# ---- model -----------------------------------------------------------------------------------------------

def build(alias: str, layers: int | None, dtype: torch.dtype, device: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    from sfcompile.models.aliases import alias_config

    cfg = alias_config(alias)
    if device == "cpu":
        for key, value in TINY.items():
            setattr(cfg, key, value)
    if layers:
        cfg.num_hidden_layers = layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:layers]
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


@torch.no_grad()
def harden_random(model, pattern: str, slorb: int = 0) -> list[str]:
    """Zero every discovered site to ``pattern`` (magnitude projection) and mark it hardened, as `harden`
    leaves it; with ``slorb`` = k > 0 also give every Linear-like site a SLoRB bypass of group k (S random, gain
    1), as a model trained by sfcompile loads: y = x W_sparse^T + S (P x) costs its dense matmul at inference.
    Returns the site names."""
    from sfcompile.masking.slorb import add_slorb, slorb_unsupported
    from sfcompile.passes.discover import discover
    from sfcompile.passes.site import mark_hardened
    from sfcompile.patterns import parse_pattern

    p = parse_pattern(pattern)
    params = dict(model.named_parameters())
    sites = discover(model, p).sites
    for site in sites:
        w = params[site.name]
        w.mul_(p.project(w.abs(), site.k_dim).to(w.dtype))
        mark_hardened(w, {"pattern": str(p), "k_dim": site.k_dim, "kind": site.kind, "site": site.name})
        if slorb:
            reason = slorb_unsupported(site, slorb)
            if reason:
                raise SystemExit(f"--e2e-patterns +slorb{slorb}: {site.name}: {reason}")
            add_slorb(model.get_submodule(site.module), site.kind, site.shape, slorb, dtype=w.dtype,
                      device=w.device)[0].normal_(0, 0.02)
    return [s.name for s in sites]


# ---- timing ----------------------------------------------------------------------------------------------

def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _mark_step():
    if hasattr(torch.compiler, "cudagraph_mark_step_begin"):
        torch.compiler.cudagraph_mark_step_begin()


def _forward(model):
    """``fwd(ids, cache, pos) -> logits`` writing ``ids`` at positions ``pos`` of the static cache, for
    transformers 5.17 (``past_key_values``, ``cache_position``) and 5.24+ (``cache``, positions only)."""
    import inspect

    params = inspect.signature(model.model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    with_cache_position = "cache_position" in params

    def fwd(ids, cache, pos):
        kwargs = {cache_kw: cache, "position_ids": pos.unsqueeze(0).expand(ids.shape[0], -1)}
        if with_cache_position:
            kwargs["cache_position"] = pos
        return model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs).logits

    return fwd


def _step_fn(model):
    fwd = _forward(model)

    def step(tok, cache, pos):
        logits = fwd(tok, cache, pos)
        return logits[:, -1].argmax(-1, keepdim=True), logits

    return step


@dataclass(frozen=True)
class Variant:
    """One column of the table, parsed from ``--e2e-patterns``: ``BASE[+FLAG...]``, BASE ``dense`` or a pattern.

    A pattern runs the backend with its defaults; ``+nofuse`` turns its ``fuse`` option off (one packed op per
    site), ``+nopdl`` / ``+pdl`` set its ``pdl`` option off / on (default ``"auto"``: on for a graph at one row,
    i.e. decode at batch 1), ``+frag`` (block-16 only) its ``block16_frag`` option on (tiles in fragment order),
    ``+slorbK`` (e.g. ``2:4+slorb16``) a SLoRB bypass of group K on every site (`harden_random`): the speed of a
    model sfcompile trained, with the backend's ``fuse_bypass`` option (default on: each bypass inside its
    packed op's kernel); ``+nofusebypass`` turns it off (the bypass as the hook's small dense ops;
    ``+fusebypass``, the default, is still accepted); ``+ksums`` turns the backend's ``kernel_sums`` on (the
    decode kernels sum x themselves: no block-sum reduction left in the graph).
    ``dense+pdl`` is dense
    Inductor with its kernels launched with programmatic dependent launch (``triton.enable_pdl``)."""

    base: str
    fuse: bool = True
    pdl: bool | str = "auto"
    frag: bool = False
    slorb: int = 0  # SLoRB group (0: no bypass)
    fuse_bypass: bool = True
    kernel_sums: bool = False

    @classmethod
    def parse(cls, label: str) -> Variant:
        base, *flags = label.split("+")
        allowed = ("pdl",) if base == "dense" else ("fuse", "nofuse", "pdl", "nopdl", "fusebypass",
                                                                  "nofusebypass")
        allowed += ("ksums",) + (("frag",) if base.startswith("block16") else ()) if base != "dense" else ()
        slorb = [f for f in flags if base != "dense" and f.startswith("slorb") and f[5:].isdigit() and int(f[5:])]
        for flag in flags:
            if flag not in allowed + tuple(slorb):
                raise SystemExit(f"--e2e-patterns: {label!r}: unknown variant {flag!r}; a pattern takes +nofuse "
                                 f"and +nopdl or +pdl (e.g. 2:4+nofuse+nopdl), +slorbK (a SLoRB bypass of "
                                 f"group K >= 1, e.g. 2:4+slorb16), +nofusebypass and +ksums, block-16 also +frag, "
                                 f"dense only +pdl")
        if base == "dense":
            return cls(base, pdl="pdl" in flags)
        pdl = False if "nopdl" in flags else True if "pdl" in flags else "auto"
        return cls(base, fuse="nofuse" not in flags, pdl=pdl, frag="frag" in flags,
                   slorb=int(slorb[-1][5:]) if slorb else 0, fuse_bypass="nofusebypass" not in flags,
                   kernel_sums="ksums" in flags)

    @property
    def backend(self) -> str | None:
        return None if self.base == "dense" else "sparseforge"

    def compile_kwargs(self, cudagraphs: bool, hook=None) -> dict:
        """``torch.compile`` arguments of this column (it takes a mode or options, not both)."""
        if self.backend is None:
            if not self.pdl:
                return {"mode": "reduce-overhead" if cudagraphs else None}
            return {"options": {"triton.cudagraphs": cudagraphs, "triton.enable_pdl": True}}
        options = {"cudagraphs": cudagraphs, "fuse": self.fuse, "pdl": self.pdl, "fuse_bypass": self.fuse_bypass,
                   "kernel_sums": self.kernel_sums}
        if self.frag:
            options["block16_frag"] = True
        if hook is not None:
            options["on_lower"] = hook
        return {"backend": self.backend, "options": options}


def compile_step(model, variant: Variant, cudagraphs: bool, hook=None):
    """One greedy decode step, compiled whole as ``variant`` says: dense Inductor or sparseforge, with CUDA
    graphs or not."""
    return torch.compile(_step_fn(model), fullgraph=True, dynamic=False, **variant.compile_kwargs(cudagraphs, hook))


def _static_cache(model, max_len: int):
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=max_len)


@contextlib.contextmanager
def launch_decisions():
    """Collect the backend's per-graph launch decisions (its ``pdl`` option resolved: which launches, for how
    many rows, how many broadcast copies) logged while the block runs; yields the list of distinct messages."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            msg = record.getMessage().removeprefix("sparseforge: ")
            if "launches for a graph" in msg and msg not in found:
                found.append(msg)

    logger, handler = logging.getLogger("sfcompile.lowering.backend"), Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@torch.no_grad()
def time_decode(model, step, batch: int, new_tokens: int, device: str,
                prompt: int = 16, profile_to: Path | None = None, profile_steps: int = 8) -> tuple[float, float]:
    """(ms per decode step, max relative logit error of the first compiled step vs eager). With
    ``profile_to``, ``profile_steps`` more steps run under the profiler after the timed ones (which it does
    not touch) and their table is written there (:func:`write_profile`)."""
    # Positions advance in lockstep with the cache's own counter (5.24+): check step, 3 warm-up, timed steps.
    extra = profile_steps if profile_to is not None else 0  # the profiled steps go after the timed ones
    cache = _static_cache(model, prompt + new_tokens + 8 + extra)
    fwd = _forward(model)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    tok = fwd(ids, cache, torch.arange(prompt, device=device))[:, -1:].argmax(-1)  # eager: fills the cache
    positions = torch.arange(prompt, prompt + new_tokens + 8 + extra, device=device)

    reference = copy.deepcopy(cache)
    _mark_step()
    _, logits = step(tok, cache, positions[0:1])
    logits = logits.clone()
    eager = fwd(tok, reference, positions[0:1])
    err = ((logits.float() - eager.float()).abs().max() / eager.float().abs().max()).item()
    del reference

    def run(n: int, first: int):
        t = tok
        for i in range(first, first + n):
            _mark_step()
            t = step(t, cache, positions[i:i + 1])[0].clone()
        return t

    run(3, 1)  # CUDA graph warm-up and recording
    _sync(device)
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run(new_tokens, 4)
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        run(new_tokens, 4)
        ms = (time.perf_counter() - t0) * 1e3
    if profile_to is not None:
        write_profile(profile_to, lambda: run(profile_steps, 4 + new_tokens), profile_steps, device)
    return ms / new_tokens, err


def write_profile(path: Path, fn, steps: int, device: str) -> None:
    """Run ``fn`` (``steps`` decode steps) under torch.profiler; write the ops and kernels by self time on the
    device (CPU when there is none), per step, to ``path``. Under CUDA graphs the kernels are those of the
    graph replays, if CUPTI reports them; the file says when it saw none."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        _sync(device)
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    lines = [f"# {steps} decode steps; {key} per step (us); total {total / steps:.1f} us per step",
             "us/step\tcalls/step\tname"]
    lines += [f"{getattr(e, key) / steps:.2f}\t{e.count / steps:.1f}\t{e.key}" for e in events[:40]
              if getattr(e, key) > 0]
    if total == 0:
        lines.append("no events with device time (CUDA graph replays hidden from the profiler?)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


@torch.no_grad()
def time_prefill(model, variant: Variant, tokens: int, device: str, reps: int = 5) -> float:
    """Median ms of a compiled forward over ``tokens`` tokens (batch 1) into a static cache."""
    cache = _static_cache(model, tokens)
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    positions = torch.arange(tokens, device=device)
    fwd = _forward(model)
    fwd(ids[:, :1], cache, positions[:1])  # eager: allocates the cache

    fn = torch.compile(fwd, fullgraph=True, dynamic=False, **variant.compile_kwargs(device == "cuda"))
    times = []
    for i in range(reps + 2):
        cache.reset()  # in place (static addresses kept): every rep writes positions 0..tokens-1
        _mark_step()
        _sync(device)
        t0 = time.perf_counter()
        fn(ids, cache, positions)
        _sync(device)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---- one model -------------------------------------------------------------------------------------------

def bench_model(args: E2EConfig, alias: str, emit) -> list[Row]:
    """Dense first, then every ``--e2e-patterns`` column (:class:`Variant`), one model built per column."""
    rows: list[Row] = []
    started = time.perf_counter()
    labels = ["dense"] + [p for p in args.patterns if p != "dense"]
    for pattern in labels:
        rows += _bench_variant(args, alias, pattern, Variant.parse(pattern), started, emit)
    return rows


def _bench_variant(args: E2EConfig, alias: str, pattern: str, variant: Variant, started: float, emit) -> list[Row]:
    device, dtype = args.device, getattr(torch, args.dtype)
    layers = args.layers
    backend = variant.backend
    rows: list[Row] = []

    def over_budget() -> bool:
        return args.budget_s and time.perf_counter() - started > args.budget_s

    if over_budget():
        rows.append(Row(alias, layers, pattern, 0, notes=["skipped: time budget spent"]))
        emit(rows[-1])
        return rows
    torch._dynamo.reset()
    model = build(alias, layers, dtype, device, seed=0)
    n_layers = model.config.num_hidden_layers
    lowered: list = []
    sites = []
    if backend:
        sites = harden_random(model, variant.base, variant.slorb)
    all_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # (with any bypass's S)

    def hook(gm, report, lowered=lowered):
        lowered.append((gm, report))

    step = compile_step(model, variant, device == "cuda", hook)
    for batch in args.batches:
        if over_budget():
            rows.append(Row(alias, n_layers, pattern, batch, notes=["skipped: time budget spent"]))
            emit(rows[-1])
            continue
        t0 = time.perf_counter()
        row = Row(alias, n_layers, pattern, batch)
        try:
            prof = args.profile / f"{alias}_{pattern.replace(':', 'of')}_b{batch}.txt" if args.profile else None
            with launch_decisions() as decisions:
                ms, err = time_decode(model, step, batch, args.new_tokens, device, profile_to=prof,
                                      profile_steps=args.profile_steps)
            row.decode_ms_per_step, row.decode_tok_s = ms, batch * 1e3 / ms
            row.logit_err = err
            row.notes.extend(decisions)
        except Exception as e:  # noqa: BLE001 - a benchmark row records the failure and goes on
            row.notes.append(f"decode failed: {type(e).__name__}: {str(e)[:300]}")
        row.notes.append(f"decode compile+run {time.perf_counter() - t0:.0f}s")
        if backend:
            params = dict(model.named_parameters())
            done = {s for _, rep in lowered for s in rep.lowered}
            row.packed_ops = sum(rep.packed_ops for _, rep in lowered[-1:])
            packed = {}
            for gm, _ in lowered:
                for name, buf in gm.named_buffers():
                    if name.startswith("_sf_packed_"):
                        packed[buf.data_ptr()] = buf.numel() * buf.element_size()
            site_bytes = sum(params[s].numel() * params[s].element_size() for s in done)
            packed_bytes = sum(packed.values())
            row.site_bytes, row.packed_bytes = site_bytes, packed_bytes
            row.weight_bytes = all_bytes - site_bytes + packed_bytes
            if len(done) != len(sites):
                row.notes.append(f"only {len(done)} of {len(sites)} hardened sites lowered")
            dense = {s: r for _, rep in lowered for s, r in rep.dense.items()}
            if dense:
                row.notes.append(f"dense: {dense}")
        else:
            row.weight_bytes = all_bytes
        if batch == 1 and args.prefill and (backend is None or pattern in args.prefill_patterns):
            t0 = time.perf_counter()
            try:
                row.prefill_ms = time_prefill(model, variant, args.prefill, device)
            except Exception as e:  # noqa: BLE001
                row.notes.append(f"prefill failed: {type(e).__name__}: {str(e)[:300]}")
            row.notes.append(f"prefill compile+run {time.perf_counter() - t0:.0f}s")
        rows.append(row)
        emit(row)
    del model, step
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


# ---- report ----------------------------------------------------------------------------------------------

def markdown(rows: list[Row]) -> str:
    dense = {(r.model, r.batch): r for r in rows if r.pattern == "dense"}
    lines = ["| model (layers) | pattern | batch | decode tok/s | ms/step | vs dense | prefill ms | vs dense "
             "| weight bytes vs dense | site bytes packed/dense | logit err |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    for r in rows:
        d = dense.get((r.model, r.batch))
        d1 = dense.get((r.model, 1))
        speed = r.decode_tok_s / d.decode_tok_s if d and r.decode_tok_s and d.decode_tok_s else None
        pre = d1.prefill_ms / r.prefill_ms if d1 and r.prefill_ms and d1.prefill_ms else None
        mem = r.weight_bytes / d.weight_bytes if d and r.weight_bytes and d.weight_bytes else None
        site = r.packed_bytes / r.site_bytes if r.site_bytes else None
        lines.append(f"| {r.model} ({r.layers}) | {r.pattern} | {r.batch} | {fmt(r.decode_tok_s, '.1f')} | "
                     f"{fmt(r.decode_ms_per_step, '.3f')} | {fmt(speed, '.2f')}× | "
                     f"{fmt(r.prefill_ms, '.2f')} | "
                     f"{fmt(pre, '.2f')}× | {fmt(mem, '.3f')}× | {fmt(site, '.3f')}× | "
                     f"{fmt(r.logit_err, '.1e')} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("e2e")
    g.add_argument("--model", default="llama-2-7b",
                   help="comma-separated model aliases (default %(default)s)")
    g.add_argument("--layers", type=int, default=None, help="decoder layers to build (default: all)")
    g.add_argument("--e2e-patterns", default="2:4,block16",
                   help="comma-separated columns after dense: hardened patterns, run with the backend's defaults, "
                        "and variants: PATTERN+nofuse (one packed op per site), PATTERN+nopdl / +pdl (plain "
                        "launches / programmatic dependent launch at every batch; default: at batch 1 only), "
                        "block16+frag (tiles in fragment order), "
                        "dense+pdl (Inductor's kernels with programmatic dependent launch) (default %(default)s)")
    g.add_argument("--batches", default="1,8",
                   help="comma-separated decode batch sizes (default %(default)s)")
    g.add_argument("--new-tokens", type=int, default=256,
                   help="decode steps timed (default %(default)s)")
    g.add_argument("--prefill", type=int, default=2048,
                   help="prefill tokens, 0 to skip (default %(default)s)")
    g.add_argument("--prefill-patterns", default="2:4,block16",
                   help="patterns whose prefill is timed (default %(default)s)")
    g.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--budget-s", type=float, default=0, help="per-model time budget; later configs are "
                                                             "skipped, not cut (0 = none)")
    g.add_argument("--e2e-out", dest="e2e_out", type=Path, help="write rows (.json) and table (.md) here")
    g.add_argument("--e2e-profile", dest="e2e_profile", type=Path, metavar="DIR",
                   help="after each decode timing, profile more steps and write their op/kernel table to DIR")
    g.add_argument("--e2e-profile-steps", dest="e2e_profile_steps", type=int, default=8)


def run(args) -> int:
    import sfcompile.lowering  # noqa: F401  (registers the backend)

    cfg = E2EConfig.from_args(args)
    rows: list[Row] = []

    def emit(row: Row) -> None:  # every row is written as soon as it exists: a cut run keeps what it measured
        rows.append(row)
        print(json.dumps(asdict(row)), flush=True)
        if cfg.out:
            cfg.out.parent.mkdir(parents=True, exist_ok=True)
            cfg.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=1))

    for alias in cfg.models:
        bench_model(cfg, alias, emit)
    table = markdown(rows)
    print(table)
    if cfg.out:
        meta = {"device": torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu",
                "torch": torch.__version__, "argv": sys.argv}
        record = {"meta": meta, "rows": [asdict(r) for r in rows]}
        cfg.out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
        cfg.out.with_suffix(".md").write_text(table + "\n")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
