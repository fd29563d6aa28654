"""Tempering schedule: every SparseForge knob that changes during training, as a pure function of the step.

SparseForge (arXiv 2605.06402) tempers a soft mask into a hard pattern. Six quantities move with the step:

* **target sparsity** s(t): ramps 0 → the pattern's sparsity over the warm-up (linear, or cubic as the
  reference uses for block patterns);
* **temperature** T(t) of the gate G = σ((score − τ)/T): decays geometrically from ``temperature_start`` to
  ``temperature_floor``, reached at ``temperature_floor_at``, then stays there. The reference multiplies T by
  0.97 per mask update and jumps from 0.134 to its 0.05 floor when the update period changes; here T is
  continuous (and non-increasing) in the step;
* **pull strength** λ(t) toward the hard pattern: ramps 0 → ``pull_max`` over ``pull_warmup``;
* **hardness** h(t) of the forward mask m_eff = h·m + (1 − h)·hard(m): 1 until ``harden_start``, linear to 0
  at ``harden_end``, 0 after; masks are finalised (exact, frozen) at ``finalize_at``;
* **SLoRB gain** g(t) of the bypass y += g·S(P x): 1 − h(t), so the bypass blends in as the pruned weights fade
  out; with ``slorb_fade_start`` < 1 it is further multiplied by a linear fall from 1 at ``slorb_fade_start`` to
  0 at the last step, so the trained model ends without a bypass (the trainer removes it before hardening) and
  decodes without S's bytes;
* **update period** K(t): masks are updated every ``period_early`` steps before ``period_switch`` and every
  ``period_late`` steps after. A period is an absolute step count (a whole number >= 1) or a fraction of the
  total steps (< 1, rounded, at least 1 step). The defaults are the reference's 30 / 10 steps: an update (a
  score pass over every weight, and a Hessian probe before it) costs several training steps, so updating
  every step would multiply the cost of a run; a run too short for one update is refused by `validate`.

Convention: window points (``*_warmup``, ``*_at``, ``*_start``, ``*_end``, ``period_switch``) are FRACTIONS of
the total number of optimizer steps, so one schedule serves a 200-step CPU run and a 20,000-step GPU run; the
update periods are fractions too (< 1), or absolute step counts (>= 1). ``t`` below is the number of
optimizer steps completed (0 … total).

Defaults follow the reference LLaMA run (20,000 mask steps: warm-up 500, K 30 → 10 at 2,000, hardening
2,000 → 17,000, finalisation at 20,000, then post-finalisation recovery) rescaled to fractions, with a final
25% of recovery on exact masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["TemperingSchedule", "ScheduleError"]


class ScheduleError(ValueError):
    """A schedule value that cannot work."""


_RAMPS = ("linear", "cubic")


@dataclass(frozen=True)
class TemperingSchedule:
    """All SparseForge step-dependent quantities (see the module docstring for the conventions).

    Example::

        sched = TemperingSchedule(harden_start=0.2, harden_end=0.7, finalize_at=0.8)
        sched.temperature(t=150, total=1000), sched.hardness(150, 1000)
    """

    sparsity_warmup: float = 0.05        # fraction: target sparsity reaches the pattern's sparsity here
    sparsity_ramp: str = "linear"        # "linear" | "cubic" (1 − (1 − x)³, the reference's block modes)
    temperature_start: float = 1.0
    temperature_floor: float = 0.05
    temperature_floor_at: float = 0.12   # fraction where T reaches its floor (reference: ≈ 2,300 / 20,000)
    pull_max: float = 0.1                # λ_max (reference LLaMA: 0.1)
    pull_lr: float = 0.1                 # step size of the pull (reference LLaMA pen_lr: 0.1)
    pull_warmup: float = 0.05            # fraction: λ reaches pull_max here
    mask_momentum: float = 0.9           # m ← momentum·m + (1 − momentum)·G at every update
    period_early: int | float = 30       # K before period_switch: steps (int) or fraction (float < 1)
    period_late: int | float = 10        # K after period_switch
    period_switch: float = 0.1
    harden_start: float = 0.1
    harden_end: float = 0.6
    finalize_at: float = 0.75
    slorb_fade_start: float = 1.0        # fraction where the bypass gain starts falling to 0 at the end (1: never)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sparsity_ramp":
                if value not in _RAMPS:
                    raise ScheduleError(f"sparsity_ramp={value!r} is not supported; use one of {_RAMPS}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ScheduleError(f"{f.name}={value!r} must be a finite number")
        for name in ("sparsity_warmup", "temperature_floor_at", "pull_warmup", "period_switch",
                     "harden_start", "harden_end", "finalize_at", "slorb_fade_start"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ScheduleError(f"{name}={value} is a fraction of the total steps and must lie in [0, 1] "
                                    "(a window past the end of training never completes)")
        if not self.harden_start <= self.harden_end <= self.finalize_at:
            raise ScheduleError(f"need harden_start <= harden_end <= finalize_at, got {self.harden_start}, "
                                f"{self.harden_end}, {self.finalize_at}: masks must be hard before they are "
                                "finalised")
        if self.slorb_fade_start < min(self.harden_start, self.finalize_at):
            raise ScheduleError(f"slorb_fade_start={self.slorb_fade_start} comes before the SLoRB bypass is "
                                f"initialised (at harden_start={self.harden_start}): start the fade at or after "
                                "it, or leave it at 1 (no fade)")
        if not 0.0 < self.temperature_floor <= self.temperature_start:
            raise ScheduleError(f"need 0 < temperature_floor <= temperature_start, got "
                                f"{self.temperature_floor} and {self.temperature_start}")
        if self.pull_max < 0 or self.pull_lr < 0:
            raise ScheduleError(f"pull_max={self.pull_max} and pull_lr={self.pull_lr} must be >= 0")
        if not 0.0 <= self.mask_momentum < 1.0:
            raise ScheduleError(f"mask_momentum={self.mask_momentum} must lie in [0, 1): at 1 the mask "
                                "never moves")
        for name in ("period_early", "period_late"):
            value = getattr(self, name)
            if not (0.0 < value < 1.0 or value >= 1 and float(value).is_integer()):
                raise ScheduleError(f"{name}={value!r} is an update period: a whole number of steps >= 1, "
                                    "or a fraction of the total steps in (0, 1)")

    def validate(self, total: int) -> None:
        """Check that this schedule does something in a run of ``total`` optimizer steps."""
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ScheduleError(f"total steps must be an integer >= 1, got {total!r}")
        final = self.finalize_step(total)
        first = next((t for t in range(1, final) if self.is_update(t, total)), None)
        if first is None:
            raise ScheduleError(f"no mask update would happen: masks are finalised after {final} of "
                                f"{total} steps, before the first update period ({self.period(1, total)} "
                                "steps) ends; use a shorter period_early/period_late or a later finalize_at")

    # ---- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _progress(t: float, total: int) -> float:
        if total < 1:
            raise ScheduleError(f"total steps must be >= 1, got {total}")
        return min(max(t / total, 0.0), 1.0)

    @staticmethod
    def _ramp(p: float, end: float) -> float:
        """0 → 1 linearly over [0, end] (1 at once if end == 0)."""
        return 1.0 if end <= 0.0 else min(p / end, 1.0)

    def step_of(self, fraction: float, total: int) -> int:
        """The step count at which a window point (a fraction) falls."""
        return int(round(fraction * total))

    # ---- the schedule ------------------------------------------------------------------------------------
    def target_sparsity(self, t: float, total: int, final: float) -> float:
        """Target sparsity after ``t`` steps, ramping 0 → ``final`` (the pattern's sparsity)."""
        x = self._ramp(self._progress(t, total), self.sparsity_warmup)
        if self.sparsity_ramp == "cubic":
            x = 1.0 - (1.0 - x) ** 3
        return final * x

    def temperature(self, t: float, total: int) -> float:
        """Gate temperature: geometric decay T0 → floor over [0, temperature_floor_at], continuous in t."""
        x = self._ramp(self._progress(t, total), self.temperature_floor_at)
        return self.temperature_start * (self.temperature_floor / self.temperature_start) ** x

    def pull(self, t: float, total: int) -> float:
        """Pull strength λ toward the hard pattern (0 → pull_max)."""
        return self.pull_max * self._ramp(self._progress(t, total), self.pull_warmup)

    def hardness(self, t: float, total: int) -> float:
        """h: 1 (soft forward) until harden_start, linear to 0 (hard forward) at harden_end."""
        p = self._progress(t, total)
        if p <= self.harden_start:
            return 1.0
        if p >= self.harden_end:
            return 0.0
        return 1.0 - (p - self.harden_start) / (self.harden_end - self.harden_start)

    def slorb_fade(self, t: float, total: int) -> float:
        """The bypass's fade factor: 1 until slorb_fade_start, linear to 0 at the last step (1 throughout when
        slorb_fade_start is 1)."""
        p = self._progress(t, total)
        if p <= self.slorb_fade_start:
            return 1.0
        return max(0.0, 1.0 - (p - self.slorb_fade_start) / (1.0 - self.slorb_fade_start))

    def slorb_gain(self, t: float, total: int, finalized: bool = False) -> float:
        """g = (1 − h)·fade: the gain of the SLoRB bypass in the forward after ``t`` steps (h = 0 once the
        masks are ``finalized``)."""
        h = 0.0 if finalized else self.hardness(t, total)
        return (1.0 - h) * self.slorb_fade(t, total)

    @property
    def slorb_fades(self) -> bool:
        """Whether the bypass ends at gain 0 (and is removed before hardening)."""
        return self.slorb_fade_start < 1.0

    def period(self, t: int, total: int) -> int:
        """Mask update period K (steps) at step count ``t``."""
        k = self.period_early if t < self.step_of(self.period_switch, total) else self.period_late
        return int(k) if k >= 1 else max(1, round(k * total))

    def is_update(self, t: int, total: int) -> bool:
        """Whether the mask is updated after ``t`` completed steps (1 ≤ t < the finalisation step)."""
        return 1 <= t < self.finalize_step(total) and t % self.period(t, total) == 0

    def harden_start_step(self, total: int) -> int:
        return self.step_of(self.harden_start, total)

    def finalize_step(self, total: int) -> int:
        """Step count at which masks become exact and frozen (>= 1)."""
        return max(1, self.step_of(self.finalize_at, total))

    def values(self, t: int, total: int, final_sparsity: float) -> dict[str, float]:
        """Every scheduled value at ``t`` (for logging and plots)."""
        return {"target_sparsity": self.target_sparsity(t, total, final_sparsity),
                "temperature": self.temperature(t, total), "pull": self.pull(t, total),
                "hardness": self.hardness(t, total), "period": float(self.period(t, total))}
