"""CLI: `pathstrat trial-design` (see pathstrat.cli for conventions)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the app."""

    @app.command("trial-design")
    def trial_design_cmd(
        out: Path = typer.Option(..., "--out", help="Output folder (trial_design.json/.csv)."),
        selection: Path = typer.Option(None, "--selection", help="A run's selection.json: sensitivity, specificity, prevalence and their patient-bootstrap uncertainty."),
        predictions: Path = typer.Option(None, "--predictions", help="Out-of-fold predictions.csv for the threshold sweep."),
        prevalence: float = typer.Option(None, "--prevalence", help="Biomarker prevalence in the target population (default: from --selection)."),
        sensitivity: float = typer.Option(None, "--sensitivity", help="Model sensitivity (default: from --selection)."),
        specificity: float = typer.Option(None, "--specificity", help="Model specificity (default: from --selection)."),
        prevalence_ci: str = typer.Option("", "--prevalence-ci", help="95% interval LOW,HIGH."),
        sensitivity_ci: str = typer.Option("", "--sensitivity-ci", help="95% interval LOW,HIGH."),
        specificity_ci: str = typer.Option("", "--specificity-ci", help="95% interval LOW,HIGH."),
        hr_positive: float = typer.Option(..., "--hr-positive", help="Treatment hazard ratio in marker-positive patients."),
        hr_negative: float = typer.Option(1.0, "--hr-negative", help="Treatment hazard ratio in marker-negative patients."),
        alpha: float = typer.Option(0.05, "--alpha", help="Two-sided alpha."),
        power: float = typer.Option(0.8, "--power"),
        allocation: float = typer.Option(1.0, "--allocation", help="Treatment : control allocation ratio."),
        median_control: float = typer.Option(12.0, "--median-control", help="Control-arm median survival (time unit of accrual/follow-up)."),
        accrual: float = typer.Option(24.0, "--accrual", help="Accrual duration (uniform accrual)."),
        follow_up: float = typer.Option(12.0, "--follow-up", help="Follow-up after the last patient enters."),
        alpha_split: float = typer.Option(0.5, "--alpha-split-positive", help="Share of alpha for the model-positive stratum (stratified design)."),
        screening_rate: float = typer.Option(None, "--screening-rate", help="Patients screened per time unit; accrual is then solved per design."),
        cost_screen: float = typer.Option(None, "--cost-screen", help="Cost per screened patient."),
        cost_enrol: float = typer.Option(None, "--cost-enrol", help="Cost per enrolled patient."),
        simulate: int = typer.Option(0, "--simulate", help="Simulate N trials of each design (power, type-I error)."),
        n_draws: int = typer.Option(1000, "--n-draws", help="Draws for the uncertainty intervals."),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Compare all-comers, enriched and biomarker-stratified trial designs."""
        from pathstrat.errors import ConfigError
        from pathstrat.trial import run_trial_design
        from pathstrat.trial.uncertainty import ci_or_none

        given = {"prevalence": prevalence, "sensitivity": sensitivity, "specificity": specificity}
        missing = [k for k, v in given.items() if v is None]
        if missing and selection is None:
            raise ConfigError(f"trial-design needs {', '.join('--' + m for m in missing)} or "
                              "--selection RUN/selection.json.")
        params = {k: v for k, v in given.items() if v is not None}
        params.update(hr_positive=hr_positive, hr_negative=hr_negative, alpha=alpha, power=power,
                      allocation=allocation, median_control=median_control, accrual=accrual,
                      follow_up=follow_up, alpha_split_positive=alpha_split,
                      screening_rate=screening_rate, cost_screen=cost_screen, cost_enrol=cost_enrol)
        doc = run_trial_design(out, selection=selection, predictions=predictions,
                               prevalence_ci=ci_or_none(prevalence_ci),
                               sensitivity_ci=ci_or_none(sensitivity_ci),
                               specificity_ci=ci_or_none(specificity_ci), n_draws=n_draws,
                               simulate=simulate, seed=seed, **params)
        for name, d in doc["designs"].items():
            ev = "inf" if d["events"] is None else f"{d['events']:.0f}"
            en = "inf" if d["enrolled"] is None else f"{d['enrolled']:.0f}"
            sc = "inf" if d["screened"] is None else f"{d['screened']:.0f}"
            typer.echo(f"{name}: HR_eff {d['hr_effective']:.3f}, events {ev}, enrolled {en}, "
                       f"screened {sc}")
        typer.echo(f"wrote {Path(out) / 'trial_design.json'}")
