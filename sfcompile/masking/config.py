"""`ForgeConfig`: every part of SparseForge (`sfcompile.masking.forge`), each switchable, validated at the boundary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sfcompile.masking.schedule import TemperingSchedule

__all__ = ["ForgeConfig", "ForgeConfigError", "SCORES", "ESTIMATORS", "FD_ESTIMATORS", "AUTO_ESTIMATOR",
           "CONFIG_ESTIMATORS", "HESSIAN_SMOOTHING", "RESUME_NEUTRAL", "resolve_estimator"]

SCORES = ("magnitude", "wanda", "hessian_obd", "hessian_ratio", "fisher")
ESTIMATORS = ("fd", "fd_forward", "hvp")  # what a probe runs
FD_ESTIMATORS = ("fd", "fd_forward")  # the finite-difference ones: ordinary backward passes, a step fd_eps
AUTO_ESTIMATOR = "auto"  # "fd_forward" where the step's gradient is the probed batch's, else "fd" (`resolve_estimator`)
CONFIG_ESTIMATORS = (*ESTIMATORS, AUTO_ESTIMATOR)  # what a config may name
HESSIAN_SMOOTHING = ("kron", "none")
RESUME_NEUTRAL = {"update_batch_numel"}  # config fields a resume may change (speed/memory only: results are the
# same; checkpoints made before the field existed lack it)


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
            under SDPA/flash, torch.compile and FSDP2; two extra forward+backward passes per probe),
            "fd_forward" (forward differences from the gradient the training step already computed: one extra
            pass, needs one micro-batch per step probed whole, not DeepSpeed), "hvp" (exact double backward
            under math attention) or "auto" (default): "fd_forward" wherever it can run, else "fd"
            (`resolve_estimator`; the trainer resolves it in `TrainConfig` and logs the choice). The two rank
            alike against the exact HVP (Spearman 0.99) and trained to the same perplexity in an A/B
            (benchmarks/README.md, "Training overhead"); "fd_forward" costs one pass fewer.
        hessian_ema: β of the EMA of the Hessian / Fisher diagonal (bias-corrected).
        hessian_eps: ε in the scores above.
        probes_per_update: Rademacher probes per probe call (each costs one estimator evaluation).
        probe_every: probe every this many optimizer steps (the trainer asks ``wants_probe``); None (default)
            probes once per mask update, at the step that ends with the update, so a probe costs 1/K of its
            time per step (the reference probes every step: 2 extra forward+backward passes per step).
        hessian_smoothing: how the EMA'd Hutchinson diagonal is denoised before scoring. "kron" (default)
            fits it with a rank-1 row × column product, H[n, k] ≈ r[n]·c[k]/mean(H) (r, c the means over the
            reduction and the output dim): the layer Hessian of a linear map factors as (input second moment)
            ⊗ (output curvature), and a one-probe Hutchinson estimate of a single entry has a variance far
            larger than its value (the off-diagonal mass), so per-entry estimates rank weights almost at
            random while the row/column means average over thousands of entries. "none" uses the per-entry
            estimate (clamped at 0), as the reference does.
        fd_eps: finite-difference step, relative to the RMS of all sites' effective weights; None (default)
            picks it from the precision the probe's loss is computed in (`hutchinson.auto_fd_eps`: 1e-2 in
            fp32, 5e-2 under bf16/fp16 autocast, where smaller steps drown in rounding noise).
        schedule: the tempering schedule (fractions of total steps; see `TemperingSchedule`).
        tau_samples: scores sampled per site to estimate the quantile τ (the reference's 262,144).
        slorb: add the sparse low-rank bypass y += S(P x) to every Linear-like site. With the schedule's
            ``slorb_fade_start`` < 1 it is trained out again: its gain falls to 0 at the last step and the
            trainer removes it before hardening, so the model decodes without S's bytes.
        slorb_group: SLoRB group size k (K must be divisible by it).
        slorb_train_p: also train P (otherwise P stays the fixed block-sum and is not stored).
        joint_input_groups: sites that read the same input (Site.shares_input_with: q/k/v, gate/up) share one
            mask computed from their summed z-scores (requires equal shapes; others keep their own).
        seed: seeds probe vectors and τ sampling (together with the step and site index).
        update_batch_numel: the mask update runs on batches of same-shape sites stacked together (a handful
            of shapes per model; see `masking.update`); a batch holds at most this many weight entries (its
            stacked temporaries are ~10 fp32 copies of it). None (default): 2**26 on a GPU (≈ the largest
            site of an 8B model, so the update's peak memory stays what the site-by-site update needed; the
            update is bound by kernel launches there: SmolLM2-135M dispatches 31,330 ops per update site by
            site, 2,110 so), 2**22 on the CPU (bound by memory traffic, and fresh pages for temporaries above
            glibc's 32 MiB mmap threshold cost more than the ops saved). 1 updates site by site. The masks do
            not depend on it (bit-identical to site-by-site updates), so a resume may change it.
    """

    score: str = "hessian_obd"
    estimator: str = AUTO_ESTIMATOR
    hessian_ema: float = 0.98
    hessian_eps: float = 1e-8
    probes_per_update: int = 1
    probe_every: int | None = None
    hessian_smoothing: str = "kron"
    fd_eps: float | None = None
    schedule: TemperingSchedule = field(default_factory=TemperingSchedule)
    tau_samples: int = 262_144
    slorb: bool = True
    slorb_group: int = 16
    slorb_train_p: bool = False
    joint_input_groups: bool = False
    seed: int = 0
    update_batch_numel: int | None = None

    def __post_init__(self):
        if self.score not in SCORES:
            raise ForgeConfigError(f"unknown score {self.score!r}; choose one of {SCORES}")
        if self.estimator not in CONFIG_ESTIMATORS:
            raise ForgeConfigError(f"unknown estimator {self.estimator!r}; choose 'fd' (finite differences: "
                                   "works with flash/SDPA attention, torch.compile, FSDP2), 'fd_forward' (the "
                                   "same from the step's gradient, one pass fewer), 'hvp' (exact, eager only) "
                                   "or 'auto' (fd_forward where it can run, else fd)")
        if self.hessian_smoothing not in HESSIAN_SMOOTHING:
            raise ForgeConfigError(f"unknown hessian_smoothing {self.hessian_smoothing!r}; choose one of "
                                   f"{HESSIAN_SMOOTHING}")
        if self.probe_every is not None and (isinstance(self.probe_every, bool)
                                             or not isinstance(self.probe_every, int) or self.probe_every < 1):
            raise ForgeConfigError(f"probe_every={self.probe_every!r} must be an integer >= 1, or None (probe "
                                   "once per mask update)")
        if not 0.0 <= self.hessian_ema < 1.0:
            raise ForgeConfigError(f"hessian_ema={self.hessian_ema} must lie in [0, 1)")
        if not self.hessian_eps >= 0.0:
            raise ForgeConfigError(f"hessian_eps={self.hessian_eps} must be >= 0")
        for name in ("probes_per_update", "tau_samples", "slorb_group", "update_batch_numel"):
            value = getattr(self, name)
            if name == "update_batch_numel" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ForgeConfigError(f"{name}={value!r} must be an integer >= 1")
        if isinstance(self.fd_eps, str):  # from a KEY=VALUE command line
            object.__setattr__(self, "fd_eps", None if self.fd_eps.lower() in ("none", "auto") else
                               float(self.fd_eps))
        if self.fd_eps is not None and not 0.0 < self.fd_eps < 1.0:
            raise ForgeConfigError(f"fd_eps={self.fd_eps} must lie in (0, 1) (it is relative to the "
                                   "weight RMS; 1e-2 for fp32 compute, 5e-2 under bf16 autocast) or None")
        if not isinstance(self.schedule, TemperingSchedule):
            raise ForgeConfigError("schedule must be a TemperingSchedule, got "
                                   f"{type(self.schedule).__name__}")
        if self.schedule.slorb_fades and not self.slorb:
            raise ForgeConfigError(f"slorb_fade_start={self.schedule.slorb_fade_start} fades a SLoRB bypass, "
                                   "but slorb=False adds none: drop slorb_fade_start or set slorb=True")

    def validate(self, total_steps: int) -> None:
        """Check that this configuration works in a run of ``total_steps`` optimizer steps."""
        self.schedule.validate(total_steps)

    @property
    def uses_hessian(self) -> bool:
        return self.score in ("hessian_obd", "hessian_ratio")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_estimator(estimator: str, *, step_grads: bool) -> str:
    """The estimator a probe runs: ``estimator`` itself, or for ``"auto"`` the one-pass ``"fd_forward"`` when
    the caller's ``.grad`` is the gradient of the probed loss (``step_grads``: one micro-batch per step, probed
    whole, gradients kept by the engine), else ``"fd"``."""
    if estimator != AUTO_ESTIMATOR:
        return estimator
    return "fd_forward" if step_grads else "fd"
