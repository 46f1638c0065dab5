"""Site-level differential privacy guarantee of central DP with client-side fixed clipping.

Flower's ``DifferentialPrivacyClientSideFixedClipping`` + ``fixedclipping_mod``: every site clips
its model update (local model minus global model) to L2 norm C; the coordinator averages the m
clipped updates with equal weights and adds Gaussian noise of standard deviation z*C/m. One
site's contribution to the average moves it by at most C/m (add/remove one site, the DP-FedAvg
convention of McMahan et al. 2018), so each round is a Gaussian mechanism with
mu = sensitivity / std = 1/z.

We report the exact (epsilon, delta) of that mechanism (analytic Gaussian mechanism, Balle & Wang
2018): delta(eps) = Phi(mu/2 - eps/mu) - exp(eps) * Phi(-mu/2 - eps/mu). R rounds compose exactly
to one Gaussian mechanism with mu * sqrt(R) (Gaussian DP, Dong, Roth & Su 2022). No amplification
by sampling is claimed, so the figure is conservative when fraction_train < 1.

What it covers: the sequence of global models (and the final checkpoint) with respect to any one
site's whole dataset. What it does not cover: the per-site metrics and counts the sites report,
the join statistics, and the coordinator itself, which sees each clipped update before adding
noise (SecAgg+ hides individual updates from it, but DP and SecAgg+ cannot be combined yet).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def gaussian_delta(mu: float, epsilon: float) -> float:
    """delta of a Gaussian mechanism with sensitivity/std ratio ``mu`` at ``epsilon``."""
    from scipy.stats import norm

    if mu <= 0:
        return 0.0
    return float(norm.cdf(mu / 2 - epsilon / mu) - math.exp(epsilon) * norm.cdf(-mu / 2 - epsilon / mu))


def gaussian_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon with gaussian_delta(mu, epsilon) <= delta (bisection, 1e-6 relative)."""
    if mu <= 0:
        return 0.0
    if gaussian_delta(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(mu, hi) > delta:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return float("inf")
    for _ in range(200):
        mid = (lo + hi) / 2
        if gaussian_delta(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-6 * max(hi, 1e-9):
            break
    return hi


@dataclass(frozen=True)
class DPGuarantee:
    """(epsilon, delta) per site: for one round and for all rounds together."""

    noise_multiplier: float
    clipping_norm: float
    rounds: int
    delta: float
    epsilon_per_round: float
    epsilon_total: float
    neighbouring: str = "add/remove one site's entire data"
    mechanism: str = "Gaussian, analytic (Balle & Wang 2018), composed as mu*sqrt(rounds) (GDP)"
    covers: str = ("global model after every round and the final checkpoint; not the reported "
                   "metrics, counts or join statistics; not the coordinator, which adds the noise")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs, the CLI and federation.json."""
        return (f"site-level DP: each round is ({self.epsilon_per_round:.3g}, {self.delta:g})-DP and "
                f"all {self.rounds} rounds together ({self.epsilon_total:.3g}, {self.delta:g})-DP with "
                f"respect to {self.neighbouring} (noise multiplier {self.noise_multiplier:g}, "
                f"clipping norm {self.clipping_norm:g}; covers the {self.covers})")


def dp_guarantee(noise_multiplier: float, clipping_norm: float, rounds: int,
                 delta: float) -> DPGuarantee:
    """Guarantee of ``rounds`` rounds of client-side fixed clipping with noise ``noise_multiplier``."""
    mu = 1.0 / float(noise_multiplier)
    return DPGuarantee(noise_multiplier=float(noise_multiplier), clipping_norm=float(clipping_norm),
                       rounds=int(rounds), delta=float(delta),
                       epsilon_per_round=gaussian_epsilon(mu, delta),
                       epsilon_total=gaussian_epsilon(mu * math.sqrt(rounds), delta))
