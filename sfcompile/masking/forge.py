"""SparseForge: the training-time mask algorithm, behind one object the trainer drives.

SparseForge (arXiv 2605.06402) learns which weights a hardware pattern (2:4, N:M, block-16) keeps while the
model trains: soft masks tempered into hard ones by importance scores (Hessian-guided OBD by default), a
sparse low-rank bypass (SLoRB) that absorbs what is pruned, and finalisation into exact pattern zeros.

THE CONTRACT WITH THE TRAINER (stable; changes are announced)
==============================================================

The model must already be sparsified (``sfcompile.sparsify(model, pattern)``: every site carries a
``SoftMask``). The trainer builds ONE ``SparseForge`` before building the optimizer, and calls::

    forge = SparseForge(model, ForgeConfig(...), total_steps=N)          # N = number of optimizer steps
    opt = AdamW([*model_params, *forge.trainable_extra_parameters()])     # SLoRB S (and P): exist up-front
    for step in range(start, N):                                          # step = 0-based optimizer step
        ... forward/backward over the micro-batches (accumulating .grad) ...
        forge.mask_grads()                         # after finalisation: gradients of W masked to the pattern
        forge.observe_grads(step)                  # before clipping; Fisher EMA (no-op unless score="fisher")
        if forge.wants_probe(step):
            forge.probe(step, loss_fn)             # Hutchinson Hessian probe; leaves every .grad untouched
        clip, optimizer.step(), zero_grad
        metrics = forge.after_step(step)           # mask update / hardness / SLoRB init / finalisation
    # resume: forge.load_state_dict(ckpt["forge"]) AFTER model.load_state_dict(...)

* ``loss_fn()`` recomputes the training loss (CE + KL + ...) on the last micro-batch and returns a
  differentiable scalar; the probe calls it 2× (estimator "fd"), 1× ("fd_forward", which takes g(W) from the
  ``.grad`` the step's backward left: ``probe(step, loss_fn, step_grads=True, rng_state=...)``) or 1× with a
  double backward ("hvp").
  The probe saves and restores the RNG state around each call (dropout sees the same masks; the training
  RNG stream is untouched) and restores the weights bit-exactly.
* ``after_step(step)`` returns ``{"temperature", "target_sparsity", "sparsity", "hard_sparsity",
  "hardness", "mask_flips", "pruned_weight_ratio", "pull", "mask_update", "finalized"}`` and, with a bypass,
  ``"slorb_gain"`` (floats;
  ``sparsity`` = fraction of zeros in m_eff over all sites, ``hard_sparsity`` = that of hard(m),
  ``mask_flips`` = fraction of hard-mask entries that changed at this step, ``pruned_weight_ratio`` = mean
  |W| of the entries the new hard masks prune over that of the entries they keep (on update steps; the
  straight-through gradient keeps training the pruned entries, and this says how far they drift: a pruned
  entry that grows past the kept ones will flip back in), ``mask_update`` = 1.0 if masks were updated).
  When ``"finalized"`` is
  1.0 the masks have just become exact and frozen: W ← W ⊙ m, and ``mask_grads()`` masks the gradients of W
  to the pattern (what ``ste=False`` does in the graph, done as multi-tensor multiplies so that a compiled
  model is not recompiled for the flag; under ZeRO-3, whose gradient partitions are DeepSpeed's, the forge
  sets ``ste=False`` instead and ``mask_grads`` does nothing); from then on no probes are wanted and the
  model is ready for ``sfcompile.harden``. The trainer should then reset the optimizer state of the masked
  weights if it wishes (the reference rebuilds its optimizer); nothing in this object requires it.
* ``trainable_extra_parameters()`` returns the SLoRB parameters (``slorb_S``, and ``slorb_P`` when
  ``slorb_train_p``), created at construction (S = 0, so the model is unchanged) and initialised IN PLACE from
  the pruned weights when hardening starts (``forge.slorb_initialised_at`` = that step, None before). They are
  registered on the site's owning module, so they are in ``model.state_dict()`` and FSDP2 shards them with the
  module (call ``trainable_extra_parameters()`` AFTER ``fully_shard``, which replaces parameter objects).
  Being registered on modules, they ARE in ``model.parameters()`` once SparseForge is built: build the
  optimizer after SparseForge and do not add them twice — the list is there to put them in their own param
  group (no weight decay: they are a correction term, like a bias). Mask state and statistics are frozen
  (``requires_grad=False``): filter the optimizer's parameters on ``requires_grad``.
* ``state_dict()`` / ``load_state_dict(sd)``: the small state not already in ``model.state_dict()`` (step,
  probe count, config echo for a consistency check). Per-site statistics (Hessian EMA ``sf_hdiag``, Fisher EMA
  ``sf_fisher``, activation norms ``sf_act_sq``) are frozen nn.Parameters on each SoftMask, created at
  construction, so they ride in ``model.state_dict()`` and are sharded with their weight. Probe vectors
  and the τ samples are drawn from generators seeded by (seed, step, site index): resume is exact without
  RNG state.
* ``forge.metrics_names`` lists the keys after_step returns (for the JSONL / TensorBoard schema).

Estimator choice ("fd" by default): exact Hessian-vector products need a double backward, which flash /
memory-efficient / cuDNN SDPA, ``torch.compile`` and FSDP2 do not support. Central finite differences of
gradients, Hv ≈ (g(W + εv) − g(W − εv)) / 2ε, need only two ordinary forward+backward passes, so they run
wherever training runs; the error is O(ε²) (zero on a quadratic) and the estimator is validated against the
exact one (tests/masking/test_hutchinson.py). "fd_forward" differences (g(W + εv) − g(W)) / ε with g(W) the
training step's own gradient: one pass instead of two. Each probe is off by (ε/2)·v ⊙ T[v, v] (T the third
derivative), whose mean over Rademacher probes is 0 (odd moments vanish), so the EMA'd diagonal is as
unbiased as the central one's; it needs one micro-batch per step, probed whole (the trainer checks).
`benchmarks/hessian_estimators.py` compares both with the exact HVP on SmolLM2-135M. "hvp" runs the probe
under the math SDPA backend (switching an eager-incompatible attention implementation to "eager" for the
probe) and raises, naming "fd", where a double backward cannot run.

What is estimated: the diagonal of the Hessian of the loss with respect to the EFFECTIVE weight W ⊙ m_eff (the
curvature at each weight position, also where the mask is currently 0, so pruned weights can score their way
back). The exact estimator gets it through the straight-through graph; "fd" perturbs the effective weight
directly (for the probe the mask is set to 1 and W to W ⊙ m_eff ± εv, then everything is restored
bit-exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from sfcompile.masking import hutchinson, shards, slorb, tempering, update, zero3
from sfcompile.masking.config import (
    FD_ESTIMATORS,
    RESUME_NEUTRAL,
    ForgeConfig,
    ForgeConfigError,
    resolve_estimator,
)
from sfcompile.masking.scores import (
    STAT_NAMES,
    ScoreError,
    act_hook,
    bias_corrected,
    compute_score,
    ema_,
    ensure_stat,
    local,
    znorm,
)
from sfcompile.masking.state import SoftMask, dense_weight, local_views, masked_sites, refresh_effective

log = logging.getLogger(__name__)

__all__ = ["ForgeConfig", "ForgeConfigError", "SparseForge", "mask_sparsity"]


def _input_groups(entries) -> list[list[int]]:
    """Indices of sites sharing one input (union of ``shares_input_with``), equal shapes only."""
    index = {site.name: i for i, (site, _, _) in enumerate(entries)}
    parent = list(range(len(entries)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (site, _, _) in enumerate(entries):
        for other in site.shares_input_with:
            j = index.get(other)
            if j is not None and tuple(entries[j][0].shape) == tuple(site.shape):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(entries)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


@torch.no_grad()
def kron_smooth(h: torch.Tensor, k_dim: int, like: torch.Tensor, batched: bool = False) -> torch.Tensor:
    """Rank-1 fit of a Hessian diagonal estimate over its two matrix dims: H[n, k] ≈ r[n]·c[k] / mean(H) (≥ 0).

    ``h`` is this rank's rows (FSDP2 shards dim 0); ``like`` is a tensor of the site's global shape and
    sharding (the soft mask), so the mean over a sharded dim 0 is completed across ranks. Leading dims of 3-D
    expert weights are batch dims (one fit per expert). ``batched``: ``h`` is a (B, ...) stack of B sites'
    estimates (``k_dim`` and ``like`` those of one site): element-wise passes and all-reduces run once for all
    B, the means once per site (bit-identical to the unbatched call; see `scores.znorm`)."""
    h = h.float()  # means of the raw (unbiased) estimates; clamping first would bias them upward
    ndim = h.dim() - int(batched)  # dims of one site
    if ndim < 2:
        return h.clamp(min=0)
    k_dim = k_dim % ndim - ndim  # negative: the same dim of one site's tensor and of a stack
    other = -1 if k_dim == -2 else -2
    rows = -ndim  # a site's dim 0, the one FSDP2 shards

    def per_site(t: torch.Tensor, fn) -> torch.Tensor:
        return torch.stack([fn(x) for x in t]) if batched else fn(t)

    def mean(t: torch.Tensor, dim: int) -> torch.Tensor:
        if dim == rows and shards.is_sharded(like):  # rows are spread over ranks: global sum / global count
            return shards.all_reduce_sum(per_site(t, lambda x: x.sum(dim, keepdim=True))) / like.shape[0]
        return per_site(t, lambda x: x.mean(dim, keepdim=True))

    r = mean(h, k_dim)  # per output (per row for a Linear): mean over the reduction dim
    c = mean(h, other)  # per input feature
    total = mean(r, other)
    # a matrix whose estimates average to <= 0 carries no curvature information: H = 0 (score = ε·W²)
    fit = r.clamp(min=0) * c.clamp(min=0) / torch.where(total > 0, total, 1.0)
    return torch.where(total > 0, fit, 0.0)


def _mean_across_ranks(value: float, device) -> float:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


class SparseForge:
    """Drives soft-mask tempering on a sparsified model (see the module docstring for the contract).

    Example::

        sfcompile.sparsify(model, "2:4")
        forge = SparseForge(model, ForgeConfig(score="hessian_obd"), total_steps=1000)
    """

    metrics_names = ("temperature", "target_sparsity", "sparsity", "hard_sparsity", "hardness", "mask_flips",
                     "pruned_weight_ratio", "pull", "mask_update", "finalized", "slorb_gain")

    def __init__(self, model: nn.Module, config: ForgeConfig, total_steps: int):
        if not isinstance(config, ForgeConfig):
            raise ForgeConfigError(f"config must be a ForgeConfig, got {type(config).__name__}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ForgeConfigError(f"total_steps={total_steps!r} must be an integer >= 1")
        self.model, self.config, self.total_steps = model, config, total_steps
        self.entries = masked_sites(model)
        if not self.entries:
            raise ForgeConfigError(f"{type(model).__name__} has no soft masks: call "
                                   "sfcompile.sparsify(model, pattern=...) before building SparseForge")
        config.validate(total_steps)
        self.final_sparsity = self.entries[0][2].pattern.sparsity
        self.step = -1  # last step seen by after_step
        self.probe_count = 0
        self.fisher_count = 0
        self.finalized = False
        self.slorb_initialised_at: int | None = None
        self.fd_eps: float | None = None  # the finite-difference step in use (decided at the first probe)
        self._applied_hardness: float | None = None  # last value _apply_step_state wrote (None: not yet)
        self._applied_gain: float | None = None  # the same for the SLoRB gain
        self._views, self._views_key = None, None  # `_local_views` cache
        self.slorb_skipped: list[tuple[str, str]] = []
        self._collect_acts = True
        self._hooks = []
        self._groups = (_input_groups(self.entries) if config.joint_input_groups
                        else [[i] for i in range(len(self.entries))])
        low = sorted({str(s.mask.dtype) for _, _, s in self.entries if s.mask.dtype != torch.float32})
        if low:
            log.warning("soft masks are stored in %s: mask EMAs and score-order ties round away; use "
                        "sparsify(..., mask_dtype=torch.float32) for training", ", ".join(low))
        self._setup_stats()
        self._slorb_modules = self._setup_slorb() if config.slorb else []
        self._apply_step_state(0)

    # ---- construction ------------------------------------------------------------------------------------
    def _setup_stats(self) -> None:
        cfg = self.config
        for site, module, soft in self.entries:
            w = local(dense_weight(module, site.param))
            if cfg.uses_hessian:
                ensure_stat(soft, STAT_NAMES["hessian"], tuple(w.shape), w.device)
            elif cfg.score == "fisher":
                ensure_stat(soft, STAT_NAMES["fisher"], tuple(w.shape), w.device)
            elif cfg.score == "wanda":
                if site.kind not in slorb.SLORB_KINDS:
                    raise ForgeConfigError(f"score 'wanda' needs the input of {site.name} ({site.kind}), "
                                           "which a module hook cannot see for routed/matmul sites; use "
                                           "score='hessian_obd' or exclude the site")
                stat = ensure_stat(soft, STAT_NAMES["act"], (site.k,), w.device)
                self._hooks.append(module.register_forward_pre_hook(
                    act_hook(stat, cfg.hessian_ema, lambda: self._collect_acts), with_kwargs=True))

    def _setup_slorb(self) -> list[nn.Module]:
        cfg, modules = self.config, []
        for site, module, _ in self.entries:
            reason = slorb.slorb_unsupported(site, cfg.slorb_group)
            if reason is not None:
                self.slorb_skipped.append((site.name, reason))
                continue
            modules.append(module)
            if hasattr(module, "slorb_S"):  # already installed (e.g. a second SparseForge on the same model)
                continue
            w = dense_weight(module, site.param)
            slorb.add_slorb(module, site.kind, site.shape, cfg.slorb_group, train_p=cfg.slorb_train_p,
                            gain=0.0, dtype=w.dtype, device=w.device)
        if self.slorb_skipped:
            log.warning("SLoRB skipped %d site(s), e.g. %s: %s", len(self.slorb_skipped),
                        *self.slorb_skipped[0])
        return modules

    def trainable_extra_parameters(self) -> list[nn.Parameter]:
        """The SLoRB parameters (S, and P if trainable); they exist from construction on.

        Looked up on the modules at each call, so after FSDP2's ``fully_shard`` (which replaces parameters by
        DTensor ones) it returns the sharded parameters: call it after wrapping the model."""
        out = []
        for module in self._slorb_modules:
            out += [p for p in (module.slorb_S, getattr(module, "slorb_P", None)) if p is not None]
        return out

    # ---- per step ------------------------------------------------------------------------------------------
    def wants_probe(self, step: int) -> bool:
        """Whether the trainer should call `probe` at this step (Hessian scores, before finalisation)."""
        cfg, sched = self.config, self.config.schedule
        if not cfg.uses_hessian or self.finalized or step + 1 >= sched.finalize_step(self.total_steps):
            return False
        if cfg.probe_every is None:  # once per mask update, just before it (and before the first one)
            return sched.is_update(step + 1, self.total_steps) or self.probe_count == 0
        return step % cfg.probe_every == 0

    def probe(self, step: int, loss_fn: Callable[[], torch.Tensor],
              compute_dtype: torch.dtype | None = None, *, step_grads: bool = False, rng_state=None) -> None:
        """One Hutchinson probe (``probes_per_update`` Rademacher vectors) into the Hessian EMA.

        ``compute_dtype``: the precision the sites' matmuls run in under ``loss_fn`` (bf16 under autocast),
        which sets the automatic finite-difference step; None finds it by one hooked evaluation of
        ``loss_fn`` (a trainer whose ``loss_fn`` is compiled passes it: hooks and no-grad would recompile).

        ``step_grads=True`` says the sites' ``.grad`` hold exactly the gradient of ``loss_fn``'s loss at the
        current weights (the training step's: one micro-batch, before clipping), computed from RNG state
        ``rng_state`` (`hutchinson.rng_state()` taken before that forward); estimator "fd_forward" needs it
        and takes g(W) from there instead of a second pass ("auto" runs "fd_forward" with it, "fd" without)."""
        cfg = self.config
        if not cfg.uses_hessian:
            raise ForgeConfigError(f"probe() is only used by Hessian scores; score={cfg.score!r} needs none")
        estimator = resolve_estimator(cfg.estimator, step_grads=step_grads)
        base = None
        if estimator == "fd_forward":
            if not step_grads:
                raise ForgeConfigError("estimator='fd_forward' differences against the training step's gradient: "
                                       "call probe(..., step_grads=True, rng_state=...) right after the backward "
                                       "of loss_fn's loss on one micro-batch, or choose estimator='fd'")
            base = [dense_weight(module, site.param).grad for site, module, _ in self.entries]
            base = [None if g is None else local(g) for g in base]
        gens = [tempering.sample_generator(cfg.seed, step, 1_000 + i, self._device(i))
                for i in range(len(self.entries))]
        self._collect_acts = False
        try:
            if estimator in FD_ESTIMATORS and self.fd_eps is None:
                self.fd_eps = cfg.fd_eps or hutchinson.auto_fd_eps(
                    compute_dtype or hutchinson.compute_dtype(self.model, self.entries, loss_fn))
                log.info("finite-difference Hessian probes use fd_eps=%g", self.fd_eps)
            diag = hutchinson.estimate_diag(self.model, self.entries, loss_fn, estimator=estimator,
                                            generators=gens, fd_eps=self.fd_eps or 0.0,
                                            probes=cfg.probes_per_update, base_grads=base, rng=rng_state)
        finally:
            self._collect_acts = True
        # Under data parallelism the gradients are averaged across ranks before the probe reads them, so
        # Hv (fd) is already the global one; no extra all-reduce.
        ema_([getattr(soft, STAT_NAMES["hessian"]) for _, _, soft in self.entries], diag, cfg.hessian_ema)
        self.probe_count += 1

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Call after backward, before the gradient norm: after finalisation, grad(W) ← grad(W) ⊙ hard for
        every site (local shards; multi-tensor multiplies); a no-op before (straight-through gradients)."""
        if not self.finalized or self._ste_off:
            return
        grads, hards = [], []
        for (site, module, _), hard in zip(self.entries, self._local_views()[0]):
            g = dense_weight(module, site.param).grad
            if g is not None:
                grads.append(local(g))
                hards.append(hard.to(g.dtype))  # no copy when the dtypes match
        if grads:
            torch._foreach_mul_(grads, hards)

    @torch.no_grad()
    def observe_grads(self, step: int) -> None:
        """Fisher EMA from the dense weights' ``.grad`` (call before clipping); a no-op for other scores."""
        if self.config.score != "fisher" or self.finalized:
            return
        stats, grads = [], []
        for site, module, soft in self.entries:
            w = dense_weight(module, site.param)
            g = zero3.local_grad(w) if zero3.is_partitioned(w) else w.grad
            if g is not None:
                stats.append(local(getattr(soft, STAT_NAMES["fisher"])))
                grads.append(local(g).float())
        if stats:  # every step: multi-tensor kernels for all sites
            ema_(stats, torch._foreach_mul(grads, grads), self.config.hessian_ema)
            self.fisher_count += 1

    @torch.no_grad()
    def after_step(self, step: int, measure: bool = True) -> dict[str, float]:
        """Mask update (every K steps), hardness, SLoRB initialisation, finalisation; returns metrics.

        ``measure=False`` leaves out ``sparsity`` / ``hard_sparsity`` (a pass over every mask and a host sync:
        the trainer asks for them on logging steps only)."""
        cfg, sched, total = self.config, self.config.schedule, self.total_steps
        t = step + 1
        self.step = step
        values = sched.values(t, total, self.final_sparsity)
        metrics = {"mask_update": 0.0, "mask_flips": 0.0, "finalized": 0.0}
        if not self.finalized:
            if sched.is_update(t, total):
                metrics["mask_flips"], metrics["pruned_weight_ratio"] = self._update_masks(step, values)
                metrics["mask_update"] = 1.0
            if (cfg.slorb and self.slorb_initialised_at is None
                    and t >= min(sched.harden_start_step(total), sched.finalize_step(total))):
                self._init_slorb()
                self.slorb_initialised_at = step
            if t >= sched.finalize_step(total):
                self._finalize()
                metrics["finalized"] = 1.0
            else:
                self._apply_step_state(t)
        else:
            self._apply_step_state(t)  # the masks are fixed; only the bypass gain can still move (its fade)
        metrics.update(temperature=values["temperature"], target_sparsity=values["target_sparsity"],
                       pull=values["pull"], hardness=0.0 if self.finalized else values["hardness"])
        if self._slorb_modules:
            metrics["slorb_gain"] = self._applied_gain
        if measure:
            metrics.update(self._sparsity())
        return metrics

    # ---- internals ----------------------------------------------------------------------------------------
    def _device(self, i: int) -> torch.device:
        """Where site ``i``'s state lives (probe vectors and τ samples are drawn there)."""
        return local(self.entries[i][2].mask).device

    def _apply_step_state(self, t: int) -> None:
        """Hardness of every mask and the SLoRB gain for the forward after ``t`` completed steps.

        Each is written only when its value changes (small kernels per site each step otherwise; h is constant
        outside the hardening window, the gain outside it and the fade). The probe restores what it changes,
        so the cache stays true."""
        sched = self.config.schedule
        h = 0.0 if self.finalized else sched.hardness(t, self.total_steps)
        if h != self._applied_hardness:
            softs = [soft for _, _, soft in self.entries]
            for soft in softs:
                soft.hardness.fill_(h)
            refresh_effective(softs, hardness=h, views=self._local_views())
            self._applied_hardness = h
        gain = sched.slorb_gain(t, self.total_steps, finalized=self.finalized)
        if gain != self._applied_gain:
            slorb.set_slorb_gain(self._slorb_modules, gain)
            self._applied_gain = gain

    def _check_score_inputs(self) -> None:
        cfg = self.config
        if cfg.uses_hessian and self.probe_count == 0:
            raise ForgeConfigError(f"score {cfg.score!r} needs Hessian probes before the first mask "
                                   "update: call forge.probe(step, loss_fn) when forge.wants_probe(step)")
        if cfg.score == "fisher" and self.fisher_count == 0:
            raise ForgeConfigError("score 'fisher' needs gradients before the first mask update: call "
                                   "forge.observe_grads(step) after each backward")

    def _scores(self, i: int) -> torch.Tensor:
        """z-scores of site ``i`` alone (the per-site reference path, `update.update_masks_reference`)."""
        cfg = self.config
        site, module, soft = self.entries[i]
        w = local(dense_weight(module, site.param))
        self._check_score_inputs()
        kw = {}
        if cfg.uses_hessian:
            hdiag = bias_corrected(getattr(soft, STAT_NAMES["hessian"]), cfg.hessian_ema, self.probe_count)
            if cfg.hessian_smoothing == "kron":
                hdiag = kron_smooth(hdiag, soft.k_dim, soft.mask)
            kw["hdiag"] = hdiag
        elif cfg.score == "fisher":
            kw["fisher"] = bias_corrected(getattr(soft, STAT_NAMES["fisher"]), cfg.hessian_ema,
                                          self.fisher_count)
        elif cfg.score == "wanda":
            act = local(getattr(soft, STAT_NAMES["act"]))
            if bool((act == 0).all()):
                raise ForgeConfigError("score 'wanda' has seen no training forward pass of "
                                       f"{site.name} before the first mask update")
            if soft.k_dim % w.dim() == 0:  # K is the sharded dim: this rank's rows of the (K,) norms
                act = shards.local_rows(act, soft.mask)
            kw["act_sq"] = act
        return znorm(compute_score(cfg.score, w, k_dim=soft.k_dim, eps=cfg.hessian_eps, **kw))

    def _group_scores(self, group: list[int]) -> torch.Tensor:
        z = self._scores(group[0])
        if len(group) > 1:
            z = znorm(sum(self._scores(i) for i in group[1:]) + z)
        return z

    def _stacked_scores(self, idx: list[int]) -> torch.Tensor:
        """Raw scores of the same-shape sites ``idx`` at once: (len(idx), *local shape) fp32, the values
        `_scores` computes site by site before its z-normalisation."""
        cfg = self.config
        site, _, soft = self.entries[idx[0]]
        self._check_score_inputs()
        w = torch.stack([local(dense_weight(self.entries[i][1], self.entries[i][0].param)) for i in idx])

        def stat(name: str) -> torch.Tensor:  # (B, ...) the sites' statistic
            return torch.stack([local(getattr(self.entries[i][2], STAT_NAMES[name])) for i in idx])

        kw = {}
        if cfg.uses_hessian:
            kw["hdiag"] = bias_corrected(stat("hessian"), cfg.hessian_ema, self.probe_count)
            if cfg.hessian_smoothing == "kron":
                kw["hdiag"] = kron_smooth(kw["hdiag"], soft.k_dim, soft.mask, batched=True)
        elif cfg.score == "fisher":
            kw["fisher"] = bias_corrected(stat("fisher"), cfg.hessian_ema, self.fisher_count)
        elif cfg.score == "wanda":
            kw["act_sq"] = self._stacked_act(idx, stat("act"))
        ndim = len(site.shape)
        return compute_score(cfg.score, w, k_dim=soft.k_dim % ndim - ndim, eps=cfg.hessian_eps, **kw)

    def _stacked_act(self, idx: list[int], act: torch.Tensor) -> torch.Tensor:
        """Wanda's activation norms of the sites ``idx`` (act: (B, K) as stored), this rank's part of K."""
        unseen = (act == 0).all(1)  # (B,): no forward pass observed
        if bool(unseen.any()):
            name = self.entries[idx[int(unseen.nonzero()[0])]][0].name
            raise ForgeConfigError(f"score 'wanda' has seen no training forward pass of {name} before the "
                                   "first mask update")
        soft = self.entries[idx[0]][2]
        if soft.k_dim % len(self.entries[idx[0]][0].shape) == 0:  # K is the sharded dim: this rank's rows
            return torch.stack([shards.local_rows(a, self.entries[i][2].mask) for a, i in zip(act, idx)])
        return act

    def _batch_scores(self, batch: list[list[int]]) -> torch.Tensor:
        """z-scores of the G groups of ``batch`` (S same-shape sites each), stacked: (G, *local shape). A group
        of several sites (joint input groups) combines them as `_group_scores` does, in the same order."""
        z = [znorm(self._stacked_scores([group[pos] for group in batch]), batched=True)
             for pos in range(len(batch[0]))]
        if len(z) == 1:
            return z[0]
        total = z[1]
        for extra in z[2:]:
            total = total + extra
        return znorm(total + z[0], batched=True)

    def _update_masks(self, step: int, values: dict) -> float:
        # One pass over batches of same-shape site groups (`update.plan_batches`, from global shapes, so every
        # rank forms the same batches and their collectives pair up). Per batch: the stacked scores, each
        # group's τ from its own global sample (a kthvalue per row, left on the device), the tempered masks,
        # the hard masks and flips, written back by foreach copies. No scores outlive their batch (a second
        # weight-sized copy of every site would not fit next to a sharded 8B model). ZeRO-3: a batch's whole
        # tensors are gathered (a flat partition may cut an N:M group). One host sync in all: flips and the
        # NaN check together. `update.update_masks_reference` is the per-site specification.
        flips, bad, sums, count = [], [], [], 0
        for batch in update.plan_batches(self.entries, self._groups, self._batch_numel()):
            sites = [i for group in batch for i in group]
            with zero3.gathered(self._site_tensors(sites), modify=True):
                changed, nan, abs_sums = self._update_batch(step, values, batch)
                count += sum(local(self.entries[i][2].hard).numel() for i in sites)
            flips.append(changed)
            bad.append(nan)
            sums.append(abs_sums)
        dev = flips[0].device
        totals = torch.cat([torch.stack([torch.stack([f.to(dev) for f in flips]).sum().double(),
                                         torch.tensor(float(count), dtype=torch.float64, device=dev),
                                         torch.stack([b.to(dev) for b in bad]).sum().double()]),
                            torch.stack([a.to(dev) for a in sums]).sum(0)])
        if shards.is_sharded(self.entries[0][2].mask):  # counts over all ranks' rows; every rank sees a NaN
            shards.all_reduce_sum(totals)
        n_flips, n, n_bad, pruned_abs, n_pruned, kept_abs, n_kept = totals.tolist()
        if n_bad:
            self._raise_nan(step)
        refresh_effective([soft for _, _, soft in self.entries], views=self._local_views())  # no gathering
        kept_mean = kept_abs / max(n_kept, 1.0)
        ratio = (pruned_abs / max(n_pruned, 1.0)) / kept_mean if kept_mean > 0 else float("nan")
        return n_flips / max(n, 1.0), ratio

    def _batch_numel(self) -> int:
        """``ForgeConfig.update_batch_numel``, or its default for the device the masks are on."""
        if self.config.update_batch_numel is not None:
            return self.config.update_batch_numel
        return 2**22 if self._device(0).type == "cpu" else 2**26

    def _update_batch(self, step: int, values: dict,
                      batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Update the G site groups of ``batch`` together; returns (hard-mask entries that flipped, whether a
        new mask holds NaN, float64 (4,): sum of |W| and count over pruned entries, the same over kept ones),
        on the device."""
        cfg, sched = self.config, self.config.schedule
        site, _, lead = self.entries[batch[0][0]]
        z = self._batch_scores(batch)  # (G, *local shape)
        gens = [tempering.sample_generator(cfg.seed, step, group[0], self._device(group[0])) for group in batch]
        tau = tempering.quantile_rows(shards.global_samples(z, lead.mask, cfg.tau_samples, gens),
                                      values["target_sparsity"])  # (G,)
        m = torch.stack([local(self.entries[group[0]][2].mask) for group in batch])  # the lead sites' masks
        ndim = len(site.shape)
        new = tempering.tempered_mask(
            z, m, lead.pattern, lead.k_dim % ndim - ndim, target_sparsity=values["target_sparsity"],
            temperature=values["temperature"], pull=values["pull"], pull_lr=sched.pull_lr,
            momentum=sched.mask_momentum, n_samples=cfg.tau_samples, tau=tau.view(-1, *[1] * (z.dim() - 1)),
            check_nan=False)  # (G, *local shape) fp32
        del z, m
        written = [self._write_masks([self.entries[group[pos]] for group in batch], new)
                   for pos in range(len(batch[0]))]
        return sum(f for f, _ in written), torch.isnan(new).any(), sum(a for _, a in written)

    @staticmethod
    def _write_masks(entries, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``new`` (B, *local shape) fp32 into the soft masks of the B same-shape sites ``entries`` and
        its projection into their hard masks (projected from the mask as stored, in its dtype, as
        `SoftMask.set_mask` does); returns (how many hard-mask entries changed, float64 (4,): sum of |W| and
        count over the entries the new hard masks prune, the same over those they keep)."""
        site, _, soft = entries[0]
        ndim = len(site.shape)
        stored = new.to(soft.mask.dtype)
        hard = soft.pattern.project(stored, soft.k_dim % ndim - ndim, check_nan=False).to(stored.dtype)
        masks, hards = [local(s.mask) for _, _, s in entries], [local(s.hard) for _, _, s in entries]
        changed = (hard != torch.stack(hards)).sum()
        torch._foreach_copy_(masks, list(stored.unbind(0)))
        torch._foreach_copy_(hards, list(hard.unbind(0)))
        w = torch.stack([local(dense_weight(module, s.param)).detach() for s, module, _ in entries]).abs()
        kept = hard.to(w.device) != 0
        pruned_abs, all_abs = torch.where(kept, 0, w).sum(dtype=torch.float64), w.sum(dtype=torch.float64)
        n_kept = kept.sum(dtype=torch.float64)
        return changed, torch.stack([pruned_abs, w.numel() - n_kept, all_abs - pruned_abs, n_kept])

    def _raise_nan(self, step: int) -> None:
        names = [site.name for site, _, soft in self.entries if bool(torch.isnan(local(soft.mask)).any())]
        raise ScoreError(f"the mask update after step {step} gave NaN soft masks for "
                         f"{names or 'sites held by another rank'}: their scores are NaN (the weight or its "
                         "Hessian / Fisher statistic holds NaN or inf); the run has likely diverged")

    def _site_tensors(self, group) -> list[torch.Tensor]:
        """W, mask state, statistics and SLoRB tensors of the sites in ``group`` (for ZeRO-3 gathering)."""
        out = []
        for i in group:
            site, module, soft = self.entries[i]
            out += [dense_weight(module, site.param), soft.mask, soft.hard, soft.eff]
            out += [getattr(soft, name, None) for name in STAT_NAMES.values()]
            out += [getattr(module, "slorb_S", None), getattr(module, "slorb_P", None)]
        return [t for t in out if isinstance(t, torch.Tensor)]

    @staticmethod
    def _set_mask(soft: SoftMask, new: torch.Tensor) -> None:
        if hasattr(soft.mask, "to_local"):  # FSDP2 shard: write and project locally (N:M groups are local)
            local(soft.mask).copy_(new)
            local(soft.hard).copy_(soft.pattern.project(new, soft.k_dim))
            soft.refresh()
        else:
            soft.set_mask(new.to(soft.mask.dtype))

    def _init_slorb(self) -> None:
        for i, (site, module, soft) in enumerate(self.entries):
            if hasattr(module, "_sfcompile_slorb") and site.kind in slorb.SLORB_KINDS:
                with zero3.gathered(self._site_tensors([i]), modify=True):
                    slorb.init_slorb_(module, local(dense_weight(module, site.param)), local(soft.hard))

    def _local_views(self):
        """`local_views` of every site's mask state, kept while the parameter objects stay the same (FSDP2 and
        the by-hand sharding replace them once, at wrapping): a DTensor's ``to_local`` costs host time on
        every call, and steps in the hardening window refresh every m_eff. Not kept under ZeRO-3, whose
        `local` depends on whether a parameter is gathered at the moment."""
        softs = [soft for _, _, soft in self.entries]
        key = [(id(s.hard), id(s.mask), id(s.eff)) for s in softs]
        if key != self._views_key or self._ste_off:
            self._views, self._views_key = local_views(softs), key
        return self._views

    @property
    def _ste_off(self) -> bool:
        """ZeRO-3: the gradient partitions are DeepSpeed's, so finalisation masks gradients in the graph
        (``ste=False``; ZeRO-3 runs eager, so the flag costs no recompile) instead of in `mask_grads`."""
        return zero3.any_partitioned([dense_weight(module, site.param) for site, module, _ in self.entries[:1]])

    def _finalize(self) -> None:
        """Masks exact and frozen: m ← hard(m), W ← W ⊙ m, hardness 0, gradients masked from now on."""
        for i, (site, module, soft) in enumerate(self.entries):
            with zero3.gathered(self._site_tensors([i]), modify=True):
                hard = local(soft.hard).detach().clone()
                self._set_mask(soft, hard)
                local(dense_weight(module, site.param)).mul_(hard.to(dense_weight(module, site.param).dtype))
            if self._ste_off:
                soft.ste = False
        self.finalized = True
        self._applied_hardness = None  # write hardness 0 and refresh every m_eff, whatever was applied before
        self._apply_step_state(self.step + 1)

    def _sparsity(self) -> dict[str, float]:
        return mask_sparsity([soft for _, _, soft in self.entries])

    # ---- resume --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What `model.state_dict()` does not hold (the per-site statistics and masks are in it)."""
        return {"step": self.step, "probe_count": self.probe_count, "fisher_count": self.fisher_count,
                "finalized": self.finalized, "slorb_initialised_at": self.slorb_initialised_at,
                "total_steps": self.total_steps, "config": self.config.to_dict()}

    def load_state_dict(self, sd: dict) -> None:
        """Restore after ``model.load_state_dict`` (masks, statistics, SLoRB tensors come from there)."""
        if sd["total_steps"] != self.total_steps:
            raise ForgeConfigError(f"checkpoint was made for total_steps={sd['total_steps']}, this run has "
                                   f"{self.total_steps}: the schedule would differ; resume with the same "
                                   "budget")
        saved, current = sd.get("config", {}), self.config.to_dict()
        if "schedule" in saved and "slorb_fade_start" not in saved["schedule"]:  # made before the field existed,
            saved = {**saved, "schedule": {**saved["schedule"], "slorb_fade_start": 1.0}}  # when none faded
        diff = sorted(k for k in saved.keys() | current.keys()
                      if k not in RESUME_NEUTRAL and saved.get(k) != current.get(k))
        if saved and diff:
            raise ForgeConfigError(f"checkpoint's ForgeConfig differs in {diff}; resume with the same config")
        self.step = sd["step"]
        self.probe_count = sd["probe_count"]
        self.fisher_count = sd["fisher_count"]
        self.finalized = sd["finalized"]
        self.slorb_initialised_at = sd["slorb_initialised_at"]
        if self.finalized and self._ste_off:
            for _, _, soft in self.entries:
                soft.ste = False
        self._applied_hardness = self._applied_gain = None  # the loaded buffers decide nothing: write the
        self._apply_step_state(self.step + 1)  # schedule's values

    def close(self) -> None:
        """Remove the activation hooks (Wanda)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


@torch.no_grad()
def mask_sparsity(softs) -> dict[str, float]:
    """``sparsity`` (entries whose effective mask m_eff is 0) and ``hard_sparsity`` (entries the hard mask
    prunes) over the SoftMasks ``softs``, counted on each rank's local rows (FSDP2 shards, ZeRO-3 slices) and
    summed across ranks: accumulated on the device, one host sync in all, not one per site."""
    counts, total = None, 0
    for soft in softs:
        c = torch.stack([(local(soft.eff) == 0).sum(), (local(soft.hard) == 0).sum()])
        counts = c if counts is None else counts + c
        total += local(soft.hard).numel()
    if counts is None:
        return {}
    if shards.is_sharded(soft.mask) or zero3.is_partitioned(soft.mask):  # counts over all ranks' rows / slices
        counts = torch.cat([counts, counts.new_tensor([total])])
        total = shards.all_reduce_sum(counts)[-1].item()
        counts = counts[:2]
    zeros, hard_zeros = counts.tolist()
    return {"sparsity": zeros / total, "hard_sparsity": hard_zeros / total}
