"""Analytic sample sizes for three trial designs built on a biomarker model.

Why: a trial team with a model-positive rule must decide whether enrolling only model-positive
patients (enrichment) pays compared with all comers. The figures here follow from the model's
operating characteristics (sensitivity, specificity) and the biomarker's prevalence; see
``docs/trial-design.md`` for the formulas and their references.

Units: times are in the unit of ``median_control`` (months, say); rates per that unit.

Model of the population: a patient is marker-positive (M+) with probability ``prevalence``; the
model calls an M+ patient positive with probability ``sensitivity`` and an M- patient negative with
probability ``specificity``. The control arm has exponential survival with median
``median_control`` in both marker groups; treatment multiplies the hazard by ``hr_positive`` in M+
and ``hr_negative`` in M- patients. Accrual is uniform over ``accrual`` and the analysis is at
``accrual + follow_up``.

Effective hazard ratio of a mixed population: the log-rank statistic counts every event alike, so
under local alternatives its drift is the event-weighted mean of the groups' log hazard ratios:
``log HR_eff = sum_g w_g e_g log HR_g / sum_g w_g e_g`` with ``w_g`` the group's share of the enrolled
population and ``e_g`` its probability of an event by the analysis (both arms, allocation-weighted).
The simulation in :mod:`pathstrat.trial.simulate` checks the resulting power.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import norm

from pathstrat.errors import ConfigError

DESIGNS = ("all_comers", "enriched", "stratified")


@dataclass(frozen=True)
class TrialInputs:
    """Everything the analytic design needs; validated on construction."""

    prevalence: float
    sensitivity: float
    specificity: float
    hr_positive: float
    hr_negative: float = 1.0
    alpha: float = 0.05
    power: float = 0.8
    allocation: float = 1.0  # treatment : control
    median_control: float = 12.0
    accrual: float = 24.0
    follow_up: float = 12.0
    alpha_split_positive: float = 0.5  # share of alpha for the positive-stratum test (stratified)
    cost_screen: float | None = None
    cost_enrol: float | None = None
    screening_rate: float | None = None  # patients screened per time unit; sets accrual when given

    def __post_init__(self) -> None:
        for name in ("prevalence", "sensitivity", "specificity"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 < v <= 1.0):
                raise ConfigError(f"trial design: {name}={v!r} must be in (0, 1]; give it as a "
                                  "proportion (0.35, not 35).")
        for name in ("hr_positive", "hr_negative", "allocation", "median_control", "accrual"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"trial design: {name}={v!r} must be a positive finite number.")
        if not (math.isfinite(self.follow_up) and self.follow_up >= 0):
            raise ConfigError(f"trial design: follow_up={self.follow_up!r} must be >= 0.")
        if not 0 < self.alpha < 1 or not 0 < self.power < 1:
            raise ConfigError(f"trial design: alpha={self.alpha} and power={self.power} must be in (0, 1).")
        if not 0 < self.alpha_split_positive <= 1:
            raise ConfigError("trial design: alpha_split_positive must be in (0, 1].")
        if self.screening_rate is not None and not self.screening_rate > 0:
            raise ConfigError("trial design: screening_rate must be > 0 patients per time unit.")

    @property
    def p_treat(self) -> float:
        """Fraction allocated to treatment."""
        return self.allocation / (1.0 + self.allocation)

    @property
    def hazard_control(self) -> float:
        """Exponential hazard of the control arm (ln 2 / median)."""
        return math.log(2.0) / self.median_control

    @property
    def model_positive_rate(self) -> float:
        """P(model positive) = prev * sens + (1 - prev) * (1 - spec)."""
        return self.prevalence * self.sensitivity + (1 - self.prevalence) * (1 - self.specificity)

    @property
    def ppv(self) -> float:
        """Share of marker-positive patients among model-positive ones."""
        q = self.model_positive_rate
        return self.prevalence * self.sensitivity / q if q > 0 else float("nan")


def schoenfeld_events(hr: float, alpha: float, power: float, p_treat: float = 0.5) -> int:
    """Events for a two-sided log-rank test (Schoenfeld 1983), rounded up.

    ``d = (z_{1-alpha/2} + z_{power})^2 / (p (1 - p) log(hr)^2)``.
    """
    if not (hr > 0 and math.isfinite(hr)) or abs(math.log(hr)) < 1e-12:
        return math.inf  # type: ignore[return-value]
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return int(math.ceil(z * z / (p_treat * (1 - p_treat) * math.log(hr) ** 2) - 1e-9))


def logrank_power(events: float, hr: float, alpha: float, p_treat: float = 0.5) -> float:
    """Analytic power of the two-sided log-rank test with ``events`` expected events."""
    if events <= 0 or not math.isfinite(events):
        return float("nan")
    drift = math.sqrt(events * p_treat * (1 - p_treat)) * abs(math.log(hr))
    za = norm.ppf(1 - alpha / 2)
    return float(norm.cdf(drift - za) + norm.cdf(-drift - za))


def event_probability(hazard: float, accrual: float, follow_up: float) -> float:
    """P(event by the analysis) for exponential survival, uniform accrual on [0, accrual],
    analysis at ``accrual + follow_up`` (Lachin & Foulkes 1986)."""
    lam = hazard
    if accrual <= 0:
        return 1 - math.exp(-lam * follow_up)
    return 1 - (math.exp(-lam * follow_up) - math.exp(-lam * (accrual + follow_up))) / (lam * accrual)


@dataclass
class Population:
    """An enrolled population: share of M+ patients and what it implies under the inputs."""

    share_positive: float
    event_prob: float
    hr_effective: float


def population(inp: TrialInputs, share_positive: float, accrual: float) -> Population:
    """Event probability and effective HR of a population with ``share_positive`` M+ patients."""
    lam, p = inp.hazard_control, inp.p_treat
    groups = []
    for w, hr in ((share_positive, inp.hr_positive), (1 - share_positive, inp.hr_negative)):
        e = p * event_probability(lam * hr, accrual, inp.follow_up) + \
            (1 - p) * event_probability(lam, accrual, inp.follow_up)
        groups.append((w, e, hr))
    ev = sum(w * e for w, e, _ in groups)
    log_hr = sum(w * e * math.log(hr) for w, e, hr in groups) / ev if ev > 0 else 0.0
    return Population(share_positive, ev, math.exp(log_hr))


@dataclass
class DesignResult:
    """Figures of one design. ``events`` and ``enrolled`` are what the trial must reach."""

    design: str
    hr_effective: float
    events: float
    enrolled: float
    screened: float
    accrual: float
    duration: float
    number_needed_to_screen: float
    power_analytic: float
    alpha_test: float
    cost: float | None = None
    tests: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _size(inp: TrialInputs, share_pos: float, alpha: float, enrol_fraction: float
          ) -> tuple[int, Population, float, float]:
    """Events, population, enrolled and accrual for one test.

    ``enrol_fraction``: enrolled patients per screened patient (1 for all comers, the
    model-positive rate for enrichment). With a screening rate, accrual is solved so that the
    screened patients arrive at that rate (a fixed point: the event probability depends on accrual).
    """
    accrual = inp.accrual
    for _ in range(200):
        pop = population(inp, share_pos, accrual)
        d = schoenfeld_events(pop.hr_effective, alpha, inp.power, inp.p_treat)
        if not math.isfinite(d):
            return d, pop, math.inf, math.inf
        n = math.ceil(d / pop.event_prob - 1e-9)
        if inp.screening_rate is None:
            return d, pop, n, accrual
        new = n / enrol_fraction / inp.screening_rate
        if abs(new - accrual) < 1e-6 * max(1.0, accrual):
            return d, pop, n, new
        accrual = new
    return d, pop, n, accrual


def _cost(inp: TrialInputs, screened: float, enrolled: float) -> float | None:
    if inp.cost_screen is None and inp.cost_enrol is None:
        return None
    return (inp.cost_screen or 0.0) * screened + (inp.cost_enrol or 0.0) * enrolled


def design_all_comers(inp: TrialInputs) -> DesignResult:
    """All comers, no test needed: one log-rank test at ``alpha`` in the whole population."""
    d, pop, n, acc = _size(inp, inp.prevalence, inp.alpha, 1.0)
    return DesignResult("all_comers", pop.hr_effective, d, n, n, acc, acc + inp.follow_up, 1.0,
                        logrank_power(n * pop.event_prob, pop.hr_effective, inp.alpha, inp.p_treat),
                        inp.alpha, _cost_no_screen(inp, n))


def _cost_no_screen(inp: TrialInputs, n: float) -> float | None:
    """All comers are enrolled without the model's test: only enrolment costs."""
    if inp.cost_screen is None and inp.cost_enrol is None:
        return None
    return (inp.cost_enrol or 0.0) * n


def design_enriched(inp: TrialInputs) -> DesignResult:
    """Model-positive patients only: M+ share = PPV; screened = enrolled / P(model positive)."""
    q = inp.model_positive_rate
    d, pop, n, acc = _size(inp, inp.ppv, inp.alpha, q)
    s = math.ceil(n / q - 1e-9) if q > 0 else math.inf
    return DesignResult("enriched", pop.hr_effective, d, n, s, acc, acc + inp.follow_up,
                        s / n if n else math.inf,
                        logrank_power(n * pop.event_prob, pop.hr_effective, inp.alpha, inp.p_treat),
                        inp.alpha, _cost(inp, s, n))


def design_stratified(inp: TrialInputs) -> DesignResult:
    """All comers tested and stratified by the model; two log-rank tests with alpha split.

    The model-positive stratum is tested at ``alpha * alpha_split_positive`` and the whole
    population at the rest (Bonferroni, so the family-wise error stays at ``alpha``). The trial
    enrols until both tests have the target power: the larger of the two requirements.
    """
    q = inp.model_positive_rate
    a_pos = inp.alpha * inp.alpha_split_positive
    a_all = inp.alpha - a_pos
    d_pos, pop_pos, n_pos_stratum, acc_pos = _size(inp, inp.ppv, a_pos, q)
    n_for_pos = n_pos_stratum / q if q > 0 else math.inf
    tests: dict[str, Any] = {"positive_stratum": {"alpha": a_pos, "events": d_pos,
                                                  "hr_effective": pop_pos.hr_effective}}
    n, acc = n_for_pos, acc_pos
    if a_all > 0:
        d_all, pop_all, n_all, acc_all = _size(inp, inp.prevalence, a_all, 1.0)
        tests["overall"] = {"alpha": a_all, "events": d_all, "hr_effective": pop_all.hr_effective}
        if n_all > n:
            n, acc = n_all, acc_all
    n = math.ceil(n - 1e-9) if math.isfinite(n) else n
    if inp.screening_rate is not None and math.isfinite(n):
        acc = n / inp.screening_rate
    # power of each test at the enrolled size
    pop_pos = population(inp, inp.ppv, acc)
    tests["positive_stratum"]["power_analytic"] = logrank_power(
        n * q * pop_pos.event_prob, pop_pos.hr_effective, a_pos, inp.p_treat)
    if "overall" in tests:
        pa = population(inp, inp.prevalence, acc)
        tests["overall"]["power_analytic"] = logrank_power(n * pa.event_prob, pa.hr_effective,
                                                           a_all, inp.p_treat)
    return DesignResult("stratified", pop_pos.hr_effective, d_pos, n, n, acc, acc + inp.follow_up,
                        1.0, tests["positive_stratum"]["power_analytic"], a_pos, _cost(inp, n, n),
                        tests)


def compare_designs(inp: TrialInputs) -> dict[str, DesignResult]:
    """The three designs for the same inputs, keyed by design name."""
    return {"all_comers": design_all_comers(inp), "enriched": design_enriched(inp),
            "stratified": design_stratified(inp)}
