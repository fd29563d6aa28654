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
        forge.observe_grads(step)                  # before clipping; Fisher EMA (no-op unless score="fisher")
        if forge.wants_probe(step):
            forge.probe(step, loss_fn)             # Hutchinson Hessian probe; leaves every .grad untouched
        clip, optimizer.step(), zero_grad
        metrics = forge.after_step(step)           # mask update / hardness / SLoRB init / finalisation
    # resume: forge.load_state_dict(ckpt["forge"]) AFTER model.load_state_dict(...)

* ``loss_fn()`` recomputes the training loss (CE + KL + ...) on the last micro-batch and returns a
  differentiable scalar; the probe calls it 2× (estimator "fd") or 1× with a double backward ("hvp").
  The probe saves and restores the RNG state around each call (dropout sees the same masks; the training
  RNG stream is untouched) and restores the weights bit-exactly.
* ``after_step(step)`` returns ``{"temperature", "target_sparsity", "sparsity", "hardness", "mask_flips",
  "pull", "mask_update"}`` (floats; ``sparsity`` = fraction of zeros in m_eff over all sites, ``mask_flips`` =
  fraction of hard-mask entries that changed at this step, ``mask_update`` = 1.0 if masks were updated).
  When it returns ``"finalized": 1.0`` the masks have just become exact and frozen: W ← W ⊙ m, ``ste=False``;
  from then on no probes are wanted and the model is ready for ``sfcompile.harden``. The trainer should then
  reset the optimizer state of the masked weights if it wishes (the reference rebuilds its optimizer); nothing
  in this object requires it.
* ``trainable_extra_parameters()`` returns the SLoRB parameters (``slorb_S``, and ``slorb_P`` when
  ``slorb_train_p``), created at construction (S = 0, so the model is unchanged) and initialised IN PLACE from
  the pruned weights when hardening starts (``forge.slorb_initialised_at`` = that step, None before). They are
  registered on the site's owning module, so they are in ``model.state_dict()`` and FSDP2 shards them with the
  module. Give them no weight decay (they are a correction term, like a bias).
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
exact one (tests/masking/test_hutchinson.py). "hvp" runs the probe under the math SDPA backend (switching an
eager-incompatible attention implementation to "eager" for the probe) and raises, naming "fd", where a double
backward cannot run.

What is estimated: the diagonal of the Hessian of the loss with respect to the EFFECTIVE weight W ⊙ m_eff (the
curvature at each weight position, also where the mask is currently 0, so pruned weights can score their way
back). The exact estimator gets it through the straight-through graph; "fd" perturbs the effective weight
directly (for the probe the mask is set to 1 and W to W ⊙ m_eff ± εv, then everything is restored
bit-exactly).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sfcompile.masking.schedule import TemperingSchedule

__all__ = ["ForgeConfig", "ForgeConfigError", "SparseForge"]

SCORES = ("magnitude", "wanda", "hessian_obd", "hessian_ratio", "fisher")
ESTIMATORS = ("fd", "hvp")


class ForgeConfigError(ValueError):
    """A ForgeConfig value that cannot work."""


@dataclass(frozen=True)
class ForgeConfig:
    """Every part of SparseForge, each switchable.

    Attributes:
        score: importance score ranking the weights: "magnitude" (|W|), "wanda" (|W|·‖x‖), "hessian_obd"
            ((H+ε)·W², OBD saliency), "hessian_ratio" (|W|/√(H+ε)), "fisher" ((F+ε)·W², F = EMA of g²).
            Scores are z-normalised per site.
        estimator: Hutchinson Hessian-diagonal estimator, "fd" (central finite differences of gradients: works
            under SDPA/flash, torch.compile and FSDP2) or "hvp" (exact double backward under math attention).
        hessian_ema: β of the EMA of the Hessian / Fisher diagonal (bias-corrected).
        hessian_eps: ε in the scores above.
        probes_per_update: Rademacher probes per probe call (each costs one estimator evaluation).
        probe_every: probe every this many optimizer steps (the trainer asks ``wants_probe``).
        fd_eps: finite-difference step, relative to each site's RMS effective weight.
        schedule: the tempering schedule (fractions of total steps; see `TemperingSchedule`).
        tau_samples: scores sampled per site to estimate the quantile τ (the reference's 262,144).
        slorb: add the sparse low-rank bypass y += S(P x) to every Linear-like site.
        slorb_group: SLoRB group size k (K must be divisible by it).
        slorb_train_p: also train P (otherwise P stays the fixed block-sum and is not stored).
        joint_input_groups: sites that read the same input (Site.shares_input_with: q/k/v, gate/up) share one
            mask computed from their summed z-scores (requires equal shapes; others keep their own).
        seed: seeds probe vectors and τ sampling (together with the step and site index).
    """

    score: str = "hessian_obd"
    estimator: str = "fd"
    hessian_ema: float = 0.98
    hessian_eps: float = 1e-8
    probes_per_update: int = 1
    probe_every: int = 1
    fd_eps: float = 1e-3
    schedule: TemperingSchedule = field(default_factory=TemperingSchedule)
    tau_samples: int = 262_144
    slorb: bool = True
    slorb_group: int = 16
    slorb_train_p: bool = False
    joint_input_groups: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.score not in SCORES:
            raise ForgeConfigError(f"unknown score {self.score!r}; choose one of {SCORES}")
        if self.estimator not in ESTIMATORS:
            raise ForgeConfigError(f"unknown estimator {self.estimator!r}; choose 'fd' (finite differences: "
                                   "works with flash/SDPA attention, torch.compile, FSDP2) or 'hvp' (exact, "
                                   "eager only)")
        if not 0.0 <= self.hessian_ema < 1.0:
            raise ForgeConfigError(f"hessian_ema={self.hessian_ema} must lie in [0, 1)")
        if not self.hessian_eps >= 0.0:
            raise ForgeConfigError(f"hessian_eps={self.hessian_eps} must be >= 0")
        for name in ("probes_per_update", "probe_every", "tau_samples", "slorb_group"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ForgeConfigError(f"{name}={value!r} must be an integer >= 1")
        if not 0.0 < self.fd_eps < 1.0:
            raise ForgeConfigError(f"fd_eps={self.fd_eps} must lie in (0, 1) (it is relative to the "
                                   "weight RMS; 1e-3 suits fp32 weights, use ~1e-2 for bf16 ones)")
        if not isinstance(self.schedule, TemperingSchedule):
            raise ForgeConfigError("schedule must be a TemperingSchedule, got "
                                   f"{type(self.schedule).__name__}")

    @property
    def uses_hessian(self) -> bool:
        return self.score in ("hessian_obd", "hessian_ratio")

    def to_dict(self) -> dict:
        return asdict(self)


class SparseForge:
    """Drives soft-mask tempering on a sparsified model (see the module docstring for the contract).

    Implementation lands in the next commit; the signatures below are the contract.
    """

    def __init__(self, model, config: ForgeConfig, total_steps: int):
        raise NotImplementedError("SparseForge is being implemented; the contract is in the module docstring")

    def wants_probe(self, step: int) -> bool: ...
    def probe(self, step: int, loss_fn) -> None: ...
    def observe_grads(self, step: int) -> None: ...
    def after_step(self, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, sd: dict) -> None: ...
    def trainable_extra_parameters(self) -> list: ...
