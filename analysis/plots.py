"""One function per figure of the report; each takes DataFrames and returns a Figure (or None).

Axes are log10 lr and log10 l2; l2 = 0 has its own strip/tick left of (below) the smallest
positive l2. Diverged points are drawn, never dropped: an 'x' where any seed diverged,
hatched cells where all did (they count as chance error, 0.9).
"""
from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import (
    FixedFormatter,
    FixedLocator,
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from l2bn import theory
from l2bn.schema import LAYERS, layer_column, layer_columns

from .checks.premise import CHANCE_ERROR
from .collapse import DEAD_COLUMNS

PANEL = (3.2, 2.7)  # inches per panel
MAX_COLS = 4
ANNOTATE_MAX = 64  # write error values into heatmap cells up to this many cells
MIN_COLOR_RANGE = 0.01  # a heatmap's colours span at least 1% test error: no painted noise
VIRIDIS, PLASMA = matplotlib.colormaps["viridis"], matplotlib.colormaps["plasma"]


def styled(draw):
    """Draw the figure inside seaborn's whitegrid/paper style without touching the global
    matplotlib state (figures are plain matplotlib.figure.Figure objects, no pyplot)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        style = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=0.9),
                 "axes.prop_cycle": cycler(color=sns.color_palette("deep"))}
        with matplotlib.rc_context(style):
            return draw(*args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class L2Axis:
    """Where l2 values sit on a log10 axis; l2 = 0 gets a slot one grid step below."""

    zero: float
    step: float

    @classmethod
    def from_values(cls, l2: np.ndarray) -> L2Axis:
        logs = np.unique(np.log10(l2[l2 > 0])) if (l2 > 0).any() else np.array([0.0])
        step = float(np.median(np.diff(logs))) if len(logs) > 1 else 1.0
        return cls(zero=float(logs[0] - step), step=step)

    def pos(self, l2) -> np.ndarray:
        l2 = np.asarray(l2, dtype=float)
        with np.errstate(divide="ignore"):
            return np.where(l2 > 0, np.log10(np.where(l2 > 0, l2, 1.0)), self.zero)

    def ticks(self, ax, axis: str, l2: np.ndarray) -> None:
        """Integer-decade ticks, plus '0' at the zero slot when l2 = 0 is present."""
        pos = self.pos(np.unique(l2))
        lo, hi = np.floor(pos.min()), np.ceil(pos.max())
        ticks = [t for t in np.arange(lo, hi + 1) if pos.min() - 0.01 <= t <= pos.max() + 0.01
                 and (not (l2 == 0).any() or t > self.zero + self.step / 2)]
        labels = [f"1e{int(t)}" for t in ticks]
        if (l2 == 0).any():
            ticks, labels = [self.zero] + ticks, ["0"] + labels
        (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, labels)


def _grid(n: int, cols: int = MAX_COLS) -> tuple[Figure, np.ndarray]:
    ncols = min(n, cols)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges halfway between sorted centers, the ends mirrored."""
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mid = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mid[0]], mid, [2 * centers[-1] - mid[-1]]])


def _verdicts(table: pd.DataFrame) -> dict[str, dict]:
    return {r["cell"]: r for r in table.to_dict("records")} if len(table) else {}


def draw_heatmap(ax, p: pd.DataFrame, l2axis: L2Axis, vmin: float, vmax: float,
                 fit: dict | None):
    """Mean test error over (log lr, log l2) with diverged, excluded and missing points marked,
    the theory's iso-lines (dashed) and the fitted direction (solid red)."""
    lrs, l2s = np.sort(p["lr"].unique()), np.sort(p["l2"].unique())
    xs, ys = np.log10(lrs), l2axis.pos(l2s)
    shown = p.assign(error_mean=p["error_mean"].where(~p["all_diverged"]))
    table = shown.pivot_table(index="l2", columns="lr", values="error_mean", dropna=False)
    table = table.reindex(index=l2s, columns=lrs)
    mesh = ax.pcolormesh(_edges(xs), _edges(ys), table.to_numpy(), cmap="viridis",
                         vmin=vmin, vmax=vmax, shading="flat")
    ax.set_facecolor("0.85")  # missing points show the background
    xe, ye = _edges(xs), _edges(ys)
    ix, iy = np.searchsorted(lrs, p["lr"]), np.searchsorted(l2s, p["l2"])
    for r, i, j in zip(p.itertuples(), ix, iy, strict=True):
        if r.all_diverged:
            ax.add_patch(Rectangle((xe[i], ye[j]), xe[i + 1] - xe[i], ye[j + 1] - ye[j],
                                   facecolor="0.3", hatch="xx", edgecolor="0.6", lw=0))
        if r.n_diverged:
            ax.plot(xs[i], ys[j], "x", color="red", ms=7, mew=1.5)
        elif r.l2 > 0 and r.update == "l2" and not r.equilibrated:
            ax.plot(xs[i], ys[j], ".", color="white", ms=4)
        if len(p) <= ANNOTATE_MAX and not r.n_diverged:
            bright = (r.error_mean - vmin) / (vmax - vmin) > 0.6  # viridis is light up there
            digits = 1 if vmax - vmin < 0.1 else 0  # a narrow range: tenths of a percent
            ax.text(xs[i], ys[j] + 0.28 * (ye[j + 1] - ye[j]), f"{100 * r.error_mean:.{digits}f}",
                    ha="center", va="center", fontsize=5.5, color="black" if bright else "white")
    opt, update = p["optimizer"].iloc[0], p["update"].iloc[0]
    _iso_lines(ax, xs, ys[l2s > 0], 0.0 if update == "projection" else theory.iso_slope(opt))
    if (l2s == 0).any():
        ax.axhline(ye[1], color="white", lw=2)
    if fit and np.isfinite(fit.get("s", np.nan)):
        best = p[(p["l2"] > 0) & p["equilibrated"]].nsmallest(1, "error_mean")
        if len(best):
            x0, y0 = np.log10(best["lr"].iloc[0]), np.log10(best["l2"].iloc[0])
            _line(ax, x0, y0, fit["s"], color="red", ls="-", lw=1.3)
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    _lr_ticks(ax, lrs)
    l2axis.ticks(ax, "y", l2s)
    ax.grid(False)
    return mesh


def _diverged_at_top(ax, x: pd.Series, p: pd.DataFrame) -> None:
    """Red x at the top edge of the axes for every point where a seed diverged (their error
    is chance: drawing them at 0.9 would squash the curve of the others)."""
    d = p["n_diverged"] > 0
    if d.any():
        ax.plot(x[d], np.full(d.sum(), 0.97), "x", color="red", ms=7, mew=1.5, clip_on=False,
                transform=ax.get_xaxis_transform())


def _proxy_label(optimizer: str) -> str:
    """The x label of the effective-LR proxy (theory.effective_lr_proxy's form)."""
    return "(lr^2*l2)^(1/3)" if optimizer == "adam" else "lr*l2"


def _wrap(title: str, width: int = 44) -> str:
    """A panel title on as many lines as it needs (cell names grow with their settings)."""
    return "\n".join(textwrap.wrap(title, width))


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    fig.suptitle(textwrap.fill(text, int(fig.get_figwidth() * 14)), fontsize=9)


def _value_labels(values: np.ndarray) -> list[str]:
    """Labels of tick values with the fewest significant digits (2-4) that keep them apart."""
    for digits in (2, 3, 4):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            break
    return labels


def _lr_ticks(ax, lrs: np.ndarray) -> None:
    """Decade ticks on a log10(lr) x axis; the values themselves when they span < 1 decade."""
    logs = np.log10(lrs)
    decades = np.arange(np.ceil(logs.min() - 1e-9), np.floor(logs.max() + 1e-9) + 1)
    if len(decades) >= 2:
        ax.set_xticks(decades, [f"1e{int(d)}" for d in decades])
    else:
        ax.set_xticks(logs, _value_labels(lrs))


def _log_ticks(axis, values: pd.Series) -> None:
    """Short, distinct labels on a log axis. Within a factor of 10 (where a 1-2-5 locator has
    one tick or none, and matplotlib's fallback ticks all printed as 2e-2): ticks at the (up
    to 5) distinct values with 2-4 significant digits, as many as keep them apart, else a
    few evenly spaced ones. Within two decades 1-2-5 ticks, decades beyond, written as 2e-3;
    minor ticks unlabelled."""
    v = values[values > 0]
    span = np.log10(v.max() / v.min()) if len(v) else 3.0
    ticks = np.unique(v.round(12))
    if span < 1 and len(ticks) <= 5:  # iso-line designs: a tick at each diagonal's value
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter(_value_labels(ticks)))
    elif span < 1:
        axis.set_major_locator(MaxNLocator(nbins=3))
        axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.2g}"))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span < 2 else (1.0,),
                                          numticks=8))
        axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0e}".replace("e-0", "e-")
                                               .replace("e+0", "e")))
    axis.set_minor_formatter(NullFormatter())


def _line(ax, x0: float, y0: float, s: float, **style) -> None:
    """The line x + s*y = x0 + s*y0 (vertical when s = 0)."""
    if abs(s) < 1e-9:
        ax.axvline(x0, **style)
    else:
        ax.axline((x0, y0), slope=-1.0 / s, **style)


def _iso_lines(ax, xs: np.ndarray, ys: np.ndarray, s: float, n: int = 5) -> None:
    """n theory iso-lines x + s*y = c spread over the panel's positive-l2 region."""
    if not len(ys):
        return
    corners = [x + s * y for x in (xs.min(), xs.max()) for y in (ys.min(), ys.max())]
    for c in np.linspace(min(corners), max(corners), n + 2)[1:-1]:
        _line(ax, c - s * ys.mean(), ys.mean(), s, color="white", ls="--", lw=0.8, alpha=0.8)


@styled
def heatmaps(points: pd.DataFrame, collapse: pd.DataFrame, projection: pd.DataFrame,
             title: str) -> Figure | None:
    """Figures 1 and 6: one heatmap per (optimizer, norm, update) cell of `points`."""
    if points.empty:
        return None
    cells = sorted(points["cell"].unique())
    fig, axes = _grid(len(cells))
    l2axis = L2Axis.from_values(points["l2"].to_numpy())
    verdicts = _verdicts(collapse) | _verdicts(projection)
    for ax, cell in zip(axes.flat, cells, strict=False):
        fit, p = verdicts.get(cell), points[points["cell"] == cell]
        # one colour scale per panel (the iso-lines are about the shape within a panel),
        # spanning the points that did not all diverge
        finite = p.loc[~p["all_diverged"], "error_mean"]
        lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, CHANCE_ERROR)
        mesh = draw_heatmap(ax, p, l2axis, lo, max(hi, lo + MIN_COLOR_RANGE), fit)
        fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.06)
        label = _wrap(cell + (f"  [{fit['verdict']}]" if fit else ""))
        if fit and np.isfinite(fit.get("s", np.nan)):
            label += f"\nfit s={fit['s']:.2f} [{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]," \
                     f" theory {fit['s_theory']:g}"
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("lr")
        ax.set_ylabel("l2")
    _suptitle(fig, title + ": mean test error over seeds (numbers in %). Dashed: theory "
              "iso-lines; red line: fitted direction; red x: diverged (any seed); dark hatched: "
              "all seeds diverged; dot: not equilibrated; light grey: no trial")
    return fig


@styled
def collapse_plot(points: pd.DataFrame) -> Figure | None:
    """Figure 2: test error against the predicted effective LR, coloured by l2."""
    p = points[(points["update"] == "l2") & (points["l2"] > 0)]
    if p.empty:
        return None
    panels = sorted(p["cell"].unique())
    fig, axes = _grid(len(panels))
    norm = matplotlib.colors.Normalize(np.log10(p["l2"].min()), np.log10(p["l2"].max()) + 1e-12)
    for ax, cell in zip(axes.flat, panels, strict=False):
        c = p[p["cell"] == cell]
        for eq, face in ((True, None), (False, "none")):
            d = c[(c["equilibrated"] == eq) & ~c["all_diverged"]]
            colors = VIRIDIS(norm(np.log10(d["l2"])))
            ax.scatter(d["eff_lr_proxy"], d["error_mean"], c=colors if face is None else "none",
                       edgecolors=colors, s=22, lw=1,
                       label="equilibrated" if eq else "not equilibrated")
        _diverged_at_top(ax, c["eff_lr_proxy"], c)
        opt = c["optimizer"].iloc[0]
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, c["eff_lr_proxy"])
        ax.set_xlabel(_proxy_label(opt))
        ax.set_ylabel("test error")
        ax.set_title(_wrap(cell + ("  (control: no collapse expected)"
                                   if c["norm"].iloc[0] == "none" else "")), fontsize=8)
    handles = [Line2D([], [], marker="o", ls="", color="0.3", label="equilibrated"),
               Line2D([], [], marker="o", ls="", mfc="none", color="0.3",
                      label="not equilibrated"),
               Line2D([], [], marker="x", ls="", color="red", label="diverged (any seed), "
                      "at the top edge")]
    axes.flat[0].legend(handles=handles, fontsize=6)
    fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="log10 l2",
                 shrink=0.8)
    _suptitle(fig, "Collapse: mean test error against the theory's effective-LR proxy, "
              "coloured by l2: with a normalization the points should lie on one curve")
    return fig


@styled
def dead_channels(points: pd.DataFrame) -> Figure | None:
    """Figure 7: each conv layer's dead-channel fraction at the last epoch against the same
    effective-LR proxy as figure 2 (mean over non-diverged seeds; hollow: not equilibrated)."""
    cols = DEAD_COLUMNS
    p = points[(points["update"] == "l2") & (points["l2"] > 0) & ~points["all_diverged"]]
    if p.empty or not all(c in p for c in cols) or p[cols].isna().all().all():
        return None
    panels = sorted(p["cell"].unique())
    fig, axes = _grid(len(panels))
    palette = sns.color_palette("deep", len(cols))
    for ax, cell in zip(axes.flat, panels, strict=False):
        c = p[p["cell"] == cell].sort_values("eff_lr_proxy")
        for col, color in zip(cols, palette, strict=True):
            for eq, face in ((True, color), (False, "none")):
                d = c[c["equilibrated"] == eq]
                ax.scatter(d["eff_lr_proxy"], d[col], facecolors=face, edgecolors=[color],
                           s=20, lw=1)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, c["eff_lr_proxy"])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(_proxy_label(c["optimizer"].iloc[0]))
        ax.set_ylabel("dead-channel fraction")
        ax.set_title(_wrap(cell), fontsize=8)
    handles = [Line2D([], [], marker="o", ls="", color=color, label=col.split("_")[0])
               for col, color in zip(cols, palette, strict=True)]
    handles.append(Line2D([], [], marker="o", ls="", mfc="none", color="0.3",
                          label="not equilibrated"))
    axes.flat[0].legend(handles=handles, fontsize=6)
    _suptitle(fig, "Dead channels at the last epoch (channels turning < 1% of their layer's "
              "angle) against the effective-LR proxy of figure 2")
    return fig


@styled
def l2_sensitivity(points: pd.DataFrame, projection: pd.DataFrame) -> Figure | None:
    """Figure 3: test error against l2 at each lr, update=l2 beside update=projection."""
    groups = sorted(points[points["norm"] != "none"].groupby(["optimizer", "norm", "setting"])
                    .groups)
    if not groups or "projection" not in set(points["update"]):
        return None
    # a column per update the folder has: an empty column would also hide the shared y ticks
    updates = [u for u in ("l2", "projection") if u in set(points["update"])]
    fig = Figure(figsize=(len(updates) * PANEL[0], PANEL[1] * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), len(updates), squeeze=False, sharey="row")
    l2axis = L2Axis.from_values(points["l2"].to_numpy())
    lr_norm = matplotlib.colors.LogNorm(points["lr"].min(), points["lr"].max() * 1.0001)
    large = {r["cell"]: r["large_l2"] for r in projection.to_dict("records")} if len(projection) else {}
    for row, (opt, norm, setting) in zip(axes, groups, strict=True):
        for ax, update in zip(row, updates, strict=True):
            c = points[(points["optimizer"] == opt) & (points["norm"] == norm)
                       & (points["setting"] == setting) & (points["update"] == update)]
            cell = f"{opt}/{norm}/{update}{setting}"
            ax.set_title(_wrap(cell), fontsize=8)
            if c.empty:
                ax.text(0.5, 0.5, "no trials", transform=ax.transAxes, ha="center")
                continue
            for lr, d in c.groupby("lr"):
                color = PLASMA(lr_norm(lr))
                ok = d[d["fit_mean"].notna()]
                ax.errorbar(l2axis.pos(ok["l2"]), ok["fit_mean"], yerr=ok["error_sd"].fillna(0),
                            color=color, marker="o", ms=3, lw=1, label=f"lr={lr:.2g}")
            _diverged_at_top(ax, pd.Series(l2axis.pos(c["l2"]), c.index), c)
            if large.get(cell, np.inf) < c["l2"].max():
                ax.axvspan(np.log10(large[cell]), l2axis.pos(c["l2"].max()) + l2axis.step / 2,
                           color="0.8", alpha=0.5, label="large-l2 regime")
            l2axis.ticks(ax, "x", c["l2"].to_numpy())
            ax.set_xlabel("l2")
            ax.set_ylabel("test error")
        for ax in row:  # on a panel with lines: a folder may have one of the two updates only
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5, ncols=2)
                break
    _suptitle(fig, "Test error against l2 at each lr (mean and sd over the seeds that did "
              "not diverge): the projection update should be flat in l2 until the large-l2 "
              "regime (shaded); red x at the top: a seed diverged")
    return fig


@styled
def best_over_lr(points: pd.DataFrame) -> Figure | None:
    """Figure 5: best (over lr) mean test error against l2, per norm x update."""
    if points.empty:
        return None
    best = points.loc[points.groupby(["optimizer", "setting", "norm", "update", "l2"])
                      ["error_mean"].idxmin()]
    panels = sorted(best.groupby(["optimizer", "setting"]).groups)
    fig, axes = _grid(len(panels))
    l2axis = L2Axis.from_values(points["l2"].to_numpy())
    palette = dict(zip(sorted(points["norm"].unique()), sns.color_palette("tab10"), strict=False))
    for ax, (opt, setting) in zip(axes.flat, panels, strict=False):
        b = best[(best["optimizer"] == opt) & (best["setting"] == setting)]
        for (norm, update), d in b.groupby(["norm", "update"]):
            d = d.sort_values("l2")
            ax.plot(l2axis.pos(d["l2"]), d["error_mean"], marker="o", ms=3,
                    color=palette[norm], ls="-" if update == "l2" else "--",
                    label=f"{norm}/{update}")
            dv = d[d["all_diverged"]]
            ax.plot(l2axis.pos(dv["l2"]), dv["error_mean"], "x", color="red", ms=8)
        l2axis.ticks(ax, "x", b["l2"].to_numpy())
        ax.set_title(f"{opt}{setting}", fontsize=8)
        ax.set_xlabel("l2")
        ax.set_ylabel("best test error over lr")
        ax.legend(fontsize=6)
    _suptitle(fig, "Does L2 help once lr is tuned? Best mean test error over lr against l2 "
              "(solid: update=l2, dashed: projection; red x: every lr diverged)")
    return fig


@styled
def dynamics(history: pd.DataFrame, cells: list[dict]) -> Figure | None:
    """Figure 4: per-layer weight norm, measured effective LR and angular update over epochs,
    with the predicted equilibrium angular update dashed where a prediction applies (l2 > 0),
    for the chosen (cell, lr, l2). Rows of diverged epochs (metrics NaN) are left out."""
    if history.empty or not cells:
        return None
    if "diverged" in history:
        history = history[~history["diverged"].fillna(False).astype(bool)]
    rows = [("unit_norm", "mean unit norm ||w_u||"), ("eff_lr", "measured effective LR"),
            ("angular_update", "angular update / step (rad)")]
    fig = Figure(figsize=(PANEL[0] * len(cells), PANEL[1] * 3), layout="constrained")
    axes = fig.subplots(3, len(cells), squeeze=False)
    colors = dict(zip(LAYERS, sns.color_palette("tab10"), strict=False))
    for col, cell in enumerate(cells):
        h = history[history["trial_id"].isin(cell["trial_ids"])]
        mean = h.groupby("epoch").mean(numeric_only=True)
        for ax, (key, label) in zip(axes[:, col], rows, strict=True):
            for layer in LAYERS:
                if layer_column(layer, key) in mean:
                    ax.plot(mean.index, mean[layer_column(layer, key)], color=colors[layer], label=layer,
                            marker="o", ms=2.5)
                pred = layer_column(layer, "pred_angular_update")
                if key == "angular_update" and pred in mean and (mean[pred] > 0).any():
                    ax.plot(mean.index, mean[pred].where(mean[pred] > 0), color=colors[layer],
                            ls="--", lw=1, marker="_", ms=8)
            shown = layer_columns(key) + (
                layer_columns("pred_angular_update") if key == "angular_update" else [])
            values = mean[[c for c in shown if c in mean]].to_numpy().ravel()
            values = values[values != 0]  # old results hold a predicted 0 at l2 = 0
            values = values[np.isfinite(values)]
            if len(values) and values.min() > 0 and values.max() > 10 * values.min():
                ax.set_yscale("log")
            else:
                ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True, min_n_ticks=1))
            ax.set_xlim(0.5, max(mean.index.max(), 1) + 0.5)
            ax.set_ylabel(label)
            ax.set_xlabel("epoch")
        axes[0, col].set_title(f"{cell['cell']}\nlr={cell['lr']:.3g}, l2={cell['l2']:.3g} "
                               f"({len(cell['trial_ids'])} seeds)", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    _suptitle(fig, "Dynamics per layer (mean over seeds); dashed: the theory's equilibrium "
              "angular update")
    return fig


@styled
def optimum(points: pd.DataFrame, table: pd.DataFrame) -> Figure | None:
    """Figure 8: mean test error against the theory's invariant product, one line per lr, the
    pooled optimum and its bootstrap interval shaded (analysis/optimum.py)."""
    if table.empty:
        return None
    fig, axes = _grid(len(table))
    palette = sns.color_palette("viridis", as_cmap=True)
    for ax, row in zip(axes.flat, table.to_dict("records"), strict=False):
        p = points[(points["cell"] == row["cell"]) & (points["l2"] > 0)]
        product = p["lr"] ** (1 / row["s_theory"]) * p["l2"]
        lrs = np.sort(p["lr"].unique())
        for i, lr in enumerate(lrs):
            k = (p["lr"] == lr).to_numpy()
            order = np.argsort(product[k].to_numpy())
            ax.plot(product[k].to_numpy()[order], p["error_mean"].to_numpy()[k][order], marker="o",
                    ms=3, color=palette(i / max(len(lrs) - 1, 1)), label=f"lr {lr:.3g}")
        if np.isfinite(row["p_star_low"]):
            ax.axvspan(row["p_star_low"], row["p_star_high"], color="0.85", zorder=0)
        if np.isfinite(row["p_star"]):
            ax.axvline(row["p_star"], color="red", lw=1)
        ax.set_xscale("log")
        _log_ticks(ax.xaxis, product)
        ax.set_xlabel("lr*l2" if row["s_theory"] == 1 else "lr^2*l2")
        ax.set_ylabel("mean test error")
        ax.set_title(_wrap(row["cell"]), fontsize=8)
        ax.legend(fontsize=6)
    _suptitle(fig, "Where is the best effective learning rate? Test error against the "
              "invariant product, one line per lr; red: the pooled quadratic's minimum, grey: "
              "its 95% bootstrap interval over seeds")
    return fig


REGIME_COLORS = {"convergence": "#d8f0d0", "chaotic equilibrium": "#f6efc4", "divergence": "#f6d2d2"}


def regimes(study) -> Figure | None:
    """Figure 9: train loss and test error of the fully scale-invariant network against its
    fixed effective learning rate (projection update: the rate is lr), regimes shaded between
    the median boundaries over seeds, the L2 arm's runs at their measured lr/||w||^2
    (geometric mean over conv layers, bar: the layers' range) (analysis/regimes.py)."""
    if study.empty:
        return None
    runs, arm = study.runs, study.l2_arm
    fig = Figure(figsize=(PANEL[0] * 2.2, PANEL[1] * 1.3), layout="constrained")
    axes = fig.subplots(1, 2)
    lo, hi = runs["lr"].min() / 1.5, runs["lr"].max() * 1.5
    cuts = [lo, *study.summary["lr_median"].tolist(), hi] if len(study.summary) else [lo, hi]
    names = ["convergence", "chaotic equilibrium", "divergence"] if len(cuts) == 4 else []
    for ax, column, label in zip(axes, ["train_loss_end", "test_error"],
                                 ["train loss (last tenth of the run)", "test error (last 3 epochs)"],
                                 strict=True):
        for (a, b), name in zip(zip(cuts[:-1], cuts[1:], strict=True), names, strict=False):
            ax.axvspan(a, b, color=REGIME_COLORS[name], zorder=0, label=name)
        for seed, r in runs.groupby("seed"):
            ax.plot(r["lr"], r[column], marker="o", ms=3, lw=0.8, label=f"seed {seed}")
        if len(arm):
            err = np.vstack([arm["eff_lr"] - arm["eff_lr_low"], arm["eff_lr_high"] - arm["eff_lr"]])
            ax.errorbar(arm["eff_lr"], arm[column], xerr=err, fmt="^", color="black", ms=4,
                        lw=0.6, label="update=l2 at its lr/||w||^2")
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("fixed effective learning rate (projection: lr)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    _suptitle(fig, "Three regimes at a fixed effective learning rate (Kodryan et al. 2022): "
              "shaded by the median boundary over seeds; black: the same network trained with "
              "L2, at the effective rate it settles at")
    return fig
