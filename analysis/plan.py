"""Can a grid answer the collapse check? Per (optimizer, norm, setting) cell with update=l2,
the grid points that can equilibrate within their budget, before anything runs.

A point counts when RELAX_FACTOR relaxation times (theory.relaxation_steps, the slowest
conv layer; Adam's from the group size and an assumed unit gradient norm PLAN_GRAD) fit in
its steps; a cell can be decided with MIN_POINTS such points over MIN_DISTINCT lr and l2
values (analysis/checks/premise.py) and at least the dof + 2 its collapse spline needs, dof
fixed by the whole design (analysis/checks/slope.py). The measured rule decides after the run;
this is its forecast.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from l2bn import theory
from l2bn.budget import budget_steps
from l2bn.config import TrialConfig
from l2bn.schema import CONV_LAYERS

from . import protocol as P
from .checks import premise as R
from .checks.slope import design_dof

CELL = ("optimizer", "norm", "l2_scope", "scale_invariant")  # one collapse cell per combination


Grad = dict[str, float] | None  # conv layer -> gradient norm at unit weight norm (Adam's forecast)


def forecast_steps(cfg: TrialConfig, grad: Grad = None) -> float:
    """The slowest conv layer's relaxation time in steps for one config; Adam's with the
    gradient norms `grad` (default: PLAN_GRAD for every layer)."""
    return theory.slowest_relaxation_steps(
        cfg.optimizer, cfg.lr, cfg.l2, cfg.width, cfg.norm,
        grad or dict.fromkeys(CONV_LAYERS, R.PLAN_GRAD), cfg.momentum)


def forecast_ready(cfg: TrialConfig, grad: Grad = None) -> bool:
    """Whether RELAX_FACTOR forecast relaxation times fit in the config's budget."""
    budget = budget_steps(cfg.data, cfg.n_train, cfg.batch_size, cfg.epochs)
    return bool(cfg.l2 > 0 and R.relaxes_in_budget(cfg.l2, forecast_steps(cfg, grad), budget))


def measured_grad(uri: str) -> dict[str, float]:
    """Per conv layer, the median over a results folder's update=l2 trials (its Adam ones when
    it has any) of the last epoch's gradient norm at unit weight norm (e.g. a pilot's, for
    Adam's forecast)."""
    from .load import load_results

    history = load_results(uri).history
    if (history["optimizer"] == "adam").any():  # the optimizer the forecast needs them for
        history = history[history["optimizer"] == "adam"]
    last = history[(history["update"] == "l2")
                   & (history["epoch"] == history.groupby("trial_id")["epoch"].transform("max"))]
    return {layer: float(last[f"{layer}_grad_norm_unit"].median()) for layer in CONV_LAYERS}


def plan_cells(configs: list[TrialConfig], grad: Grad = None) -> pd.DataFrame:
    """One row per collapse cell: points that can equilibrate, distinct lr/l2, the spline's
    dof (from every l2 > 0 design point, as the check fixes it) and whether it is decidable."""
    rows, first_seed = [], min(c.seed for c in configs)
    for cfg in configs:
        if cfg.update != "l2" or cfg.l2 <= 0 or cfg.seed != first_seed:
            continue
        rows.append({"optimizer": cfg.optimizer, "norm": cfg.norm, "l2_scope": cfg.l2_scope,
                     "scale_invariant": cfg.scale_invariant, "lr": cfg.lr, "l2": cfg.l2,
                     "ok": forecast_ready(cfg, grad)})
    if not rows:  # a projection-only grid: no collapse cell to forecast
        return pd.DataFrame()
    points = pd.DataFrame(rows)
    out = []
    for key, p in points.groupby(list(CELL), sort=True):
        ok = p[p["ok"]]
        n, n_lr, n_l2 = len(ok), ok["lr"].nunique(), ok["l2"].nunique()
        dof = design_dof(np.log(p["lr"].to_numpy(float)), np.log(p["l2"].to_numpy(float)))
        need = max(R.MIN_POINTS, dof + 2)
        out.append(dict(zip(CELL, key, strict=True))
                   | {"n_grid": len(p), "n_points": n, "n_lr": n_lr, "n_l2": n_l2, "dof": dof,
                      "n_needed": need,
                      "decidable": bool(n >= need and min(n_lr, n_l2) >= R.MIN_DISTINCT)})
    return pd.DataFrame(out)


def describe(configs: list[TrialConfig], grad: Grad = None) -> str:
    """The plan as text (`python -m analysis.plan GRID`)."""
    table = plan_cells(configs, grad)
    if table.empty:
        return "collapse forecast: no update=l2 cell with l2 > 0"
    bad = table[~table["decidable"]]
    grads = "Adam's gradient norms " + (", ".join(f"{k} {v:.3g}" for k, v in grad.items())
                                        if grad else f"{R.PLAN_GRAD:g} (assumed)")
    head = (f"collapse forecast (protocol {P.PROTOCOL}): points that can equilibrate "
            f"({R.RELAX_FACTOR:g} relaxation times within the budget; {grads}) per cell; "
            f"{len(table) - len(bad)} of {len(table)} cells decidable")
    return head + "\n" + table.to_string(index=False) + (
        "" if bad.empty else "\nundecidable: " + ", ".join(
            f"{r.optimizer}/{r.norm}/{r.l2_scope}" + ("/scale-invariant" if r.scale_invariant else "")
            for r in bad.itertuples()))


def main(argv: list[str] | None = None) -> int:
    """python -m analysis.plan GRID [--noise SD|RESULTS [--gain G]]; exit 2 with one line on a
    bad grid or results folder."""
    import argparse
    import sys

    from l2bn.grid import GridError, load_grid

    from . import power
    from .load import ResultsError

    parser = argparse.ArgumentParser(prog="python -m analysis.plan",
                                     description="Forecast which cells of a grid are decidable.")
    parser.add_argument("grid", help="a grid in sweeps/grids or a .yaml path")
    parser.add_argument("--noise", help="seed SD of one trial's outcome (a number), or a results "
                        "folder to measure it from: adds the power report")
    parser.add_argument("--gain", type=float, help="test-error change per doubling of lr at "
                        "fixed l2, for the slope's power (default: measured in --noise's folder)")
    parser.add_argument("--grad", metavar="RESULTS", help="a results folder (e.g. a pilot) whose "
                        "measured per-layer gradient norms replace the assumed 1 in Adam's "
                        "relaxation forecast")
    args = parser.parse_args(argv)
    try:
        configs = load_grid(args.grid).configs()
        grad = measured_grad(args.grad) if args.grad else None
        print(describe(configs, grad))
        if args.noise is None:
            return 0
        try:
            sigma, gain = float(args.noise), float("nan")
        except ValueError:
            sigma, gain = power.seed_noise(args.noise)
        gain = args.gain if args.gain is not None else gain
        if not np.isfinite(gain):
            parser.error("--gain is needed when --noise is a number")
        table = power.power_table(configs, sigma, gain, grad)
        print(f"\npower (protocol {P.PROTOCOL}; seed SD {sigma:.4g}, gain {gain:.4g} per doubling "
              f"of lr, family of {power.family_size(configs)} tests, power {1 - power.BETA:g}): "
              f"the smallest margin each cell decides, against the protocol's (slope "
              f"{power.slope.S_MARGIN:g}, iso/l2 effect {power.isolines.EQUIV_MARGIN:g})")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    except (GridError, ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
