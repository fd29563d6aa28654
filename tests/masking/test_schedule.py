import math

import pytest

from sfcompile.masking.schedule import ScheduleError, TemperingSchedule

TOTAL = 20_000


def _series(fn, total=TOTAL):
    return [fn(t, total) for t in range(total + 1)]


@pytest.mark.parametrize("ramp", ["linear", "cubic"])
def test_monotone(ramp):
    s = TemperingSchedule(sparsity_ramp=ramp)
    sp = _series(lambda t, n: s.target_sparsity(t, n, 0.5))
    temp = _series(s.temperature)
    pull = _series(s.pull)
    hard = _series(s.hardness)
    assert all(b >= a for a, b in zip(sp, sp[1:]))
    assert all(b <= a for a, b in zip(temp, temp[1:]))
    assert all(b >= a for a, b in zip(pull, pull[1:]))
    assert all(b <= a for a, b in zip(hard, hard[1:]))


def test_end_points():
    s = TemperingSchedule()
    assert s.target_sparsity(0, TOTAL, 0.5) == 0.0
    assert s.target_sparsity(s.step_of(s.sparsity_warmup, TOTAL), TOTAL, 0.5) == pytest.approx(0.5)
    assert s.target_sparsity(TOTAL, TOTAL, 0.5) == pytest.approx(0.5)
    assert s.temperature(0, TOTAL) == pytest.approx(s.temperature_start)
    assert s.temperature(TOTAL, TOTAL) == pytest.approx(s.temperature_floor)
    floor_step = s.step_of(s.temperature_floor_at, TOTAL)
    assert s.temperature(floor_step, TOTAL) == pytest.approx(s.temperature_floor)
    assert s.pull(0, TOTAL) == 0.0 and s.pull(TOTAL, TOTAL) == pytest.approx(s.pull_max)
    assert s.hardness(0, TOTAL) == 1.0
    assert s.hardness(s.harden_start_step(TOTAL), TOTAL) == 1.0
    assert s.hardness(s.step_of(s.harden_end, TOTAL), TOTAL) == 0.0
    assert s.hardness(TOTAL, TOTAL) == 0.0


def test_temperature_continuous_through_the_period_switch():
    s = TemperingSchedule()
    switch = s.step_of(s.period_switch, TOTAL)
    assert s.period(switch - 1, TOTAL) == 30 and s.period(switch, TOTAL) == 10  # the reference's K
    # The reference jumps 0.134 -> 0.05 here; ours moves by one step's worth of geometric decay.
    per_step = (s.temperature_floor / s.temperature_start) ** (1 / (s.temperature_floor_at * TOTAL))
    assert s.temperature(switch, TOTAL) / s.temperature(switch - 1, TOTAL) == pytest.approx(per_step)
    temps = _series(s.temperature)
    assert max(abs(a - b) for a, b in zip(temps, temps[1:])) < 2e-3
    # continuous in real-valued t as well
    t0 = 1234.5
    assert abs(s.temperature(t0 + 1e-6, TOTAL) - s.temperature(t0 - 1e-6, TOTAL)) < 1e-8


def test_hardness_and_sparsity_continuous():
    s = TemperingSchedule()
    hard = _series(s.hardness)
    sp = _series(lambda t, n: s.target_sparsity(t, n, 0.5))
    window = (s.harden_end - s.harden_start) * TOTAL
    assert max(abs(a - b) for a, b in zip(hard, hard[1:])) <= 1.0 / window + 1e-12
    assert max(abs(a - b) for a, b in zip(sp, sp[1:])) <= 0.5 / (s.sparsity_warmup * TOTAL) + 1e-12


def test_cubic_ramp_is_front_loaded():
    lin, cub = TemperingSchedule(), TemperingSchedule(sparsity_ramp="cubic")
    t = lin.step_of(lin.sparsity_warmup / 2, TOTAL)
    assert cub.target_sparsity(t, TOTAL, 0.5) == pytest.approx(0.5 * (1 - 0.5**3))
    assert lin.target_sparsity(t, TOTAL, 0.5) == pytest.approx(0.25)


def test_updates_stop_at_finalisation():
    s = TemperingSchedule(period_early=3, period_late=2, period_switch=0.5, finalize_at=0.8)
    ups = [t for t in range(101) if s.is_update(t, 100)]
    assert ups[0] == 3 and all(t < 80 for t in ups)
    assert [t for t in ups if t < 50] == list(range(3, 50, 3))
    assert [t for t in ups if t >= 50] == list(range(50, 80, 2))


def test_fractional_periods_scale_with_the_run():
    s = TemperingSchedule(period_early=0.0015, period_late=0.0005)
    assert [s.period(0, n) for n in (250, 20_000, 100_000)] == [1, 30, 150]
    assert sum(s.is_update(t, 250) for t in range(251)) == s.finalize_step(250) - 1  # every step
    fixed = TemperingSchedule(period_early=7, period_late=7)
    assert fixed.period(0, 250) == fixed.period(0, 20_000) == 7


def test_default_periods_are_the_references_steps():
    s = TemperingSchedule()
    assert [s.period(0, n) for n in (1_000, 20_000)] == [30, 30]
    assert s.period(s.step_of(s.period_switch, 1_000), 1_000) == 10


def test_whole_float_periods_are_steps():  # what a CLI that parses "30" as a float produces
    assert TemperingSchedule(period_early=30.0).period(0, 250) == 30


def test_validate_rejects_a_run_without_updates():
    TemperingSchedule().validate(100)
    with pytest.raises(ScheduleError, match="no mask update"):
        TemperingSchedule().validate(10)  # finalised at step 8, before the first 10-step period ends
    with pytest.raises(ScheduleError, match="no mask update"):
        TemperingSchedule(period_early=50, period_late=50).validate(40)
    with pytest.raises(ScheduleError, match="total steps"):
        TemperingSchedule().validate(0)


def test_short_runs_still_work():
    s = TemperingSchedule()
    assert s.finalize_step(1) == 1
    assert math.isfinite(s.temperature(0, 1)) and s.hardness(1, 1) == 0.0


@pytest.mark.parametrize("kwargs, match", [
    ({"harden_end": 1.2}, "past the end"),
    ({"finalize_at": 1.5}, "past the end"),
    ({"harden_start": 0.7, "harden_end": 0.6}, "harden_start <= harden_end"),
    ({"harden_end": 0.9, "finalize_at": 0.8}, "finalised"),
    ({"sparsity_ramp": "quadratic"}, "sparsity_ramp"),
    ({"period_early": 0}, "period_early"),
    ({"period_late": 2.5}, "period_late"),
    ({"period_early": -3}, "period_early"),
    ({"period_late": 0.0}, "period_late"),
    ({"temperature_floor": 0.0}, "temperature_floor"),
    ({"temperature_floor": 2.0}, "temperature_floor"),
    ({"mask_momentum": 1.0}, "never moves"),
    ({"pull_max": -0.1}, "pull_max"),
    ({"sparsity_warmup": float("nan")}, "finite"),
    ({"slorb_fade_start": 1.5}, "past the end"),
    ({"slorb_fade_start": 0.05}, "before the SLoRB bypass is initialised"),
])
def test_bad_values_rejected(kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        TemperingSchedule(**kwargs)


def test_total_steps_must_be_positive():
    with pytest.raises(ScheduleError, match="total steps"):
        TemperingSchedule().temperature(0, 0)


def test_slorb_gain_blends_in_then_fades_to_zero_at_the_end():
    s = TemperingSchedule(harden_start=0.1, harden_end=0.5, finalize_at=0.6, slorb_fade_start=0.8)
    total = 1000
    gains = [s.slorb_gain(t, total, finalized=t >= 600) for t in range(total + 1)]
    assert gains[0] == 0.0 and gains[100] == 0.0  # soft forward: the pruned weights are all still there
    assert gains[300] == pytest.approx(0.5) and gains[500] == 1.0 and gains[800] == 1.0
    assert gains[900] == pytest.approx(0.5) and gains[total] == 0.0
    assert all(b <= a for a, b in zip(gains[500:], gains[501:], strict=False))  # falls, never rises, after
    assert max(abs(b - a) for a, b in zip(gains, gains[1:], strict=False)) <= 1 / 200 + 1e-12  # continuous
    assert s.slorb_fades and not TemperingSchedule().slorb_fades
    assert all(TemperingSchedule().slorb_fade(t, total) == 1.0 for t in range(0, total + 1, 50))
