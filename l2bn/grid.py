"""Grids as data: a YAML file -> the exact list of TrialConfigs it describes (no Ray here;
the sweep runner and analysis.plan both read grids through it).

Format (also documented at the top of every file in sweeps/grids/):

    name: paper                 # default sweep name
    fixed:                      # TrialConfig fields held constant
      epochs: 100
    axes:                       # TrialConfig fields varied; the grid is their product, in file order
      optimizer: [sgd, adam]
      lr:                       # values that depend on another axis: `by` names it
        by: optimizer
        sgd: {start: 1e-3, stop: 1, per_decade: 2}      # log-spaced, both ends included
        adam: {start: 1e-5, stop: 1e-2, per_decade: 2}
      l2: [0, {start: 1e-6, stop: 1e-1, per_decade: 1}] # explicit values and ranges mix
    exclude:                    # a trial matching every key of one entry is dropped
      - {norm: none, update: projection}
      - {norm: none, l2_scope: [normalized]}            # a key may list several values

Or l2 on the theory's iso-lines lr^(1/s) * l2 = product (s: l2bn.theory.iso_slope), so the
points lie on the paper's diagonals; optimizer and lr must be axes listed before l2, or fixed:

      l2:
        iso: lr                 # the only allowed value
        sgd: [1e-3, 2e-3]       # products lr*l2 (also momentum, adamw): l2 = product / lr
        adam: [2e-5, {start: 1e-5, stop: 1e-4, per_decade: 2}]  # lr^2*l2: l2 = product / lr^2

Every value is validated by TrialConfig; errors name the file, the axis and the value.
"""
from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from l2bn.config import ConfigError, TrialConfig, check_field, group_key
from l2bn.theory import iso_slope

GRID_DIR = Path(__file__).resolve().parents[1] / "sweeps" / "grids"  # the shipped grid files
FIELDS = tuple(f.name for f in fields(TrialConfig))
TOP_KEYS = ("name", "description", "fixed", "axes", "exclude")
RANGE_KEYS = {"start", "stop", "per_decade"}


class GridError(ValueError):
    """A grid file is invalid; the message names the file, the axis and the value."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it: `0.1`, `1e-3`, `null`, `true`, `sgd`."""
    return yaml.load(text, Loader=_Loader)


@dataclass
class Grid:
    """A parsed grid: fixed fields, axes (plain or `by` another axis) and exclusions."""

    path: str
    name: str
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]                       # independent axes, in file order
    by_axes: dict[str, tuple[str, dict[Any, list[Any]]]] = field(default_factory=dict)
    iso_axes: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # {optimizer: products}
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)
    description: str = ""
    axis_order: list[str] = field(default_factory=list)

    def error(self, msg: str) -> GridError:
        return GridError(f"grid file {self.path}: {msg}")

    def configs(self) -> list[TrialConfig]:
        """Every trial of the grid, in file order, exclusions applied; duplicates are an error."""
        out: list[TrialConfig] = []
        seen: set[str] = set()
        for point in self._points(list(self.order), dict(self.fixed)):
            if self._excluded(point):
                continue
            cfg = self._build(point)
            if cfg.trial_id in seen:
                raise self.error(f"two grid points give the same trial: {_brief(point)}")
            seen.add(cfg.trial_id)
            out.append(cfg)
        if not out:
            raise self.error("the exclusions remove every trial; the grid is empty")
        return out

    def _points(self, names: list[str], point: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The product of the axes in `names` (first slowest); a `by` axis takes the value
        list chosen by the point's value of its `by` field."""
        if not names:
            yield point
            return
        name, rest = names[0], names[1:]
        for value in self._values(name, point):
            yield from self._points(rest, {**point, name: value})

    def _values(self, name: str, point: dict[str, Any]) -> list[Any]:
        if name in self.axes:
            return self.axes[name]
        if name in self.iso_axes:
            return self._iso_values(name, point)
        by, table = self.by_axes[name]
        key = point.get(by, _default(by))
        if key not in table:
            raise self.error(f"axis '{name}' (by {by}) has no values for {by}={key!r}; "
                             f"it lists {sorted(map(str, table))}")
        return table[key]

    def _iso_values(self, name: str, point: dict[str, Any]) -> list[float]:
        """l2 = product / lr^(1/s) for each product listed for the point's optimizer."""
        opt, lr = point["optimizer"], point["lr"]
        table = self.iso_axes[name]
        if opt not in table:
            raise self.error(f"axis '{name}' (iso: lr) has no products for optimizer={opt!r}; "
                             f"it lists {sorted(table)}")
        values = []
        for product in table[opt]:
            value = iso_l2(product, lr, opt)
            at = f"axis '{name}', {opt} product {product!r} at lr={lr!r}"
            if not (math.isfinite(value) and value > 0):
                raise self.error(f"{at}: gives l2={value!r}, not a finite number > 0")
            _check_value(f"grid file {self.path}, {at}", name, value)
            values.append(value)
        return values

    def diagonals(self, configs: list[TrialConfig]) -> dict[str, dict[float, list[tuple]]]:
        """The iso-lines the configs lie on: {optimizer: {product: [(lr, l2), ...]}}, lr ascending."""
        points = {(c.optimizer, c.lr, c.l2) for c in configs}
        out = {}
        for opt, products in self.iso_axes.get("l2", {}).items():
            lines = {p: sorted((lr, l2) for o, lr, l2 in points
                               if o == opt and iso_l2(p, lr, o) == l2) for p in products}
            if any(lines.values()):
                out[opt] = {p: pts for p, pts in lines.items() if pts}
        return out

    @property
    def order(self) -> list[str]:
        """Axis names in file order."""
        return [n for n in self.axis_order
                if n in self.axes or n in self.by_axes or n in self.iso_axes]

    def _excluded(self, point: dict[str, Any]) -> bool:
        return any(all(point.get(k, _default(k)) in vals for k, vals in rule.items())
                   for rule in self.exclude)

    def _build(self, point: dict[str, Any]) -> TrialConfig:
        try:
            return TrialConfig.from_dict(point)
        except ConfigError as exc:
            varied = {k: point[k] for k in self.order}
            raise self.error(f"grid point {_brief(varied)} is invalid: {exc}. "
                             "Add a matching entry under `exclude:` to drop it") from None

    def override(self, key: str, value: Any) -> None:
        """--set key=value: hold a field fixed at `value` (an axis of that name is dropped)."""
        if key not in FIELDS:
            raise GridError(f"--set {key}=...: unknown TrialConfig field '{key}'; "
                            f"allowed: {list(FIELDS)}")
        _check_value(f"--set {key}={value!r}", key, value)
        self.axes.pop(key, None)
        self.by_axes.pop(key, None)
        self.iso_axes.pop(key, None)
        self.fixed[key] = value


def _default(name: str) -> Any:
    return next(f.default for f in fields(TrialConfig) if f.name == name)


def _brief(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in point.items()) + "}"


def _check_value(where: str, name: str, value: Any) -> None:
    """Validate one field value on its own (over defaults, so cross-field rules stay quiet)."""
    try:
        check_field(name, value)
    except ConfigError as exc:
        raise GridError(f"{where}: invalid value {value!r} for '{name}': {exc}") from None


def log_range(start: Any, stop: Any, per_decade: Any, where: str) -> list[float]:
    """start, ..., stop log-spaced with `per_decade` points per factor of 10, both ends included."""
    ok = (all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (start, stop))
          and isinstance(per_decade, int) and not isinstance(per_decade, bool))
    if not ok or not (0 < start <= stop) or per_decade < 1 or not math.isfinite(stop):
        raise GridError(f"{where}: a range needs 0 < start <= stop and an integer per_decade >= 1, "
                        f"got start={start!r}, stop={stop!r}, per_decade={per_decade!r}")
    lo, hi = math.log10(start), math.log10(stop)
    steps = (hi - lo) * per_decade
    n = round(steps)
    if abs(steps - n) > 1e-6:
        raise GridError(f"{where}: stop={stop!r} is not start={start!r} times a whole number of "
                        f"1/{per_decade}-decade steps")
    return [float(f"{10 ** (lo + i / per_decade):.12g}") for i in range(n + 1)]


def iso_l2(product: float, lr: float, optimizer: str) -> float:
    """l2 on the iso-line lr^(1/s) * l2 = product (s: theory.iso_slope), to 12 digits like log_range."""
    try:  # lr^(1/s) may underflow to 0 or overflow: l2 inf or 0, rejected by the caller
        value = product / lr ** (1 / iso_slope(optimizer))
    except ZeroDivisionError:
        return math.inf
    except OverflowError:
        return 0.0
    return float(f"{value:.12g}")


def _items(where: str, spec: Any) -> list[Any]:
    """A value list as written: a scalar, a range mapping, or a list mixing both; not empty."""
    items = spec if isinstance(spec, list) else [spec]
    values: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            if set(item) != RANGE_KEYS:
                raise GridError(f"{where}: a range must have exactly the keys "
                                f"{sorted(RANGE_KEYS)}, got {sorted(item)}")
            values.extend(log_range(item["start"], item["stop"], item["per_decade"], where))
        else:
            values.append(item)
    if not values:
        raise GridError(f"{where}: the axis is empty; give at least one value")
    return values


def _no_repeats(where: str, values: list[Any]) -> None:
    dupes = [v for v, c in Counter(map(repr, values)).items() if c > 1]
    if dupes:
        raise GridError(f"{where}: repeated value(s) {dupes}")


def _expand(where: str, name: str, spec: Any) -> list[Any]:
    """An axis' value list, each value validated by TrialConfig, none repeated."""
    values = _items(where, spec)
    for v in values:
        _check_value(where, name, v)
    _no_repeats(where, values)
    return values


def _products(where: str, spec: Any) -> list[float]:
    """An iso axis' products lr^(1/s) * l2: values and ranges as elsewhere, each finite > 0."""
    values = _items(where, spec)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf):
            raise GridError(f"{where}: invalid product {v!r}; a product must be a finite number > 0")
    _no_repeats(where, values)
    return [float(v) for v in values]


def parse_grid(data: Any, path: str) -> Grid:
    """Validate a loaded YAML document and turn it into a Grid."""
    where = f"grid file {path}"
    if not isinstance(data, dict):
        raise GridError(f"{where}: expected a mapping with keys {list(TOP_KEYS)}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise GridError(f"{where}: unknown top-level key(s) {unknown}; allowed: {list(TOP_KEYS)}")
    fixed = data.get("fixed") or {}
    axes_spec = data.get("axes") or {}
    if not isinstance(fixed, dict) or not isinstance(axes_spec, dict):
        raise GridError(f"{where}: 'fixed' and 'axes' must be mappings of field: value(s)")
    for key, value in fixed.items():
        if key not in FIELDS:
            raise GridError(f"{where}: fixed field '{key}' is not a TrialConfig field; "
                            f"allowed: {list(FIELDS)}")
        _check_value(f"{where}, fixed field '{key}'", key, value)
    grid = Grid(path=path, name=str(data.get("name") or Path(path).stem), fixed=dict(fixed),
                axes={}, description=str(data.get("description") or ""))
    for name, spec in axes_spec.items():
        at = f"{where}, axis '{name}'"
        if name not in FIELDS:
            raise GridError(f"{at}: unknown axis; allowed axes are the TrialConfig fields "
                            f"{list(FIELDS)}")
        if name in fixed:
            raise GridError(f"{at}: the field is both fixed and an axis")
        if isinstance(spec, dict) and "iso" in spec:
            grid.iso_axes[name] = _parse_iso(at, name, spec, {*grid.axis_order, *fixed})
        elif isinstance(spec, dict) and "by" in spec:
            later = [n for n in axes_spec if n not in grid.axis_order]
            grid.by_axes[name] = _parse_by(at, name, spec, later)
        else:
            grid.axes[name] = _expand(at, name, spec)
        grid.axis_order.append(name)
    grid.exclude = [_parse_rule(f"{where}, exclude entry {i + 1}", rule)
                    for i, rule in enumerate(data.get("exclude") or [])]
    return grid


def _parse_by(at: str, name: str, spec: dict, later: list[str]) -> tuple[str, dict]:
    """`{by: optimizer, sgd: <values>, adam: <values>}` -> (by, {key: values})."""
    by = spec["by"]
    if by not in FIELDS or by == name:
        raise GridError(f"{at}: 'by: {by}' must name another TrialConfig field")
    if by in later:
        raise GridError(f"{at}: 'by: {by}' must name an axis listed before '{name}' "
                        "(or a fixed field)")
    table = {}
    for key, values in spec.items():
        if key == "by":
            continue
        _check_value(f"{at}, key {key!r}", by, key)
        table[key] = _expand(f"{at}, {by}={key}", name, values)
    if not table:
        raise GridError(f"{at}: the axis is empty; give values for some {by}")
    return by, table


def _parse_iso(at: str, name: str, spec: dict, earlier: set[str]) -> dict[str, list[float]]:
    """`{iso: lr, sgd: <products>, adam: <products>}` -> {optimizer: products}."""
    if spec["iso"] != "lr" or name != "l2":
        raise GridError(f"{at}: 'iso: {spec['iso']}' is not allowed; the only iso-line axis is "
                        "l2 with 'iso: lr'")
    for needed in ("optimizer", "lr"):
        if needed not in earlier:
            raise GridError(f"{at}: 'iso: lr' needs '{needed}' as an axis listed before "
                            f"'{name}' (or a fixed field)")
    table = {}
    for key, values in spec.items():
        if key != "iso":
            _check_value(f"{at}, key {key!r}", "optimizer", key)
            table[key] = _products(f"{at}, optimizer={key}", values)
    if not table:
        raise GridError(f"{at}: the axis is empty; give products for some optimizer")
    return table


def _parse_rule(at: str, rule: Any) -> dict[str, list[Any]]:
    if not isinstance(rule, dict) or not rule:
        raise GridError(f"{at}: must be a non-empty mapping of field: value(s), got {rule!r}")
    out = {}
    for key, values in rule.items():
        if key not in FIELDS:
            raise GridError(f"{at}: unknown field '{key}'; allowed: {list(FIELDS)}")
        values = values if isinstance(values, list) else [values]
        for v in values:
            _check_value(f"{at}, field '{key}'", key, v)
        out[key] = values
    return out


def resolve_grid_path(name_or_path: str) -> Path:
    """`--grid smoke` -> sweeps/grids/smoke.yaml; anything with a slash or .yaml is a path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise GridError(f"grid file {candidate}: no such file")
        return candidate
    shipped = GRID_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
        raise GridError(f"no grid named '{name_or_path}'; shipped grids: {names} "
                        "(or pass a path to a .yaml file)")
    return shipped


def load_grid(name_or_path: str, overrides: dict[str, Any] | None = None) -> Grid:
    """Read, validate and apply --set overrides; `.configs()` then gives the trials."""
    path = resolve_grid_path(name_or_path)
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise GridError(f"grid file {path}: not valid YAML: {exc}") from None
    grid = parse_grid(data, str(path))
    for key, value in (overrides or {}).items():
        grid.override(key, value)
    return grid


def groups(configs: list[TrialConfig], fuse: int | None) -> list[list[TrialConfig]]:
    """Configs that differ only in lr and l2 (config.group_key), in grid order, cut into
    groups of at most `fuse` (None: whole groups), as even as can be (9 by 8: 4 + 5, not
    8 + 1, so no Tune trial is a straggler); each group is one Tune trial."""
    by_key: dict[str, list[TrialConfig]] = {}
    for cfg in configs:
        by_key.setdefault(group_key(cfg), []).append(cfg)
    out = []
    for g in by_key.values():
        n = -(-len(g) // (fuse or len(g)))  # pieces of at most `fuse`
        cuts = [len(g) * i // n for i in range(n + 1)]
        out += [g[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    return out


def group_name(trial_ids: list[str]) -> str:
    """A group's name, stable across runs: its one trial id, else `g` + a hash of the ids
    (Tune's trial name, and the start of its trial folder's name)."""
    if len(trial_ids) == 1:
        return trial_ids[0]
    return "g" + hashlib.sha1(" ".join(trial_ids).encode()).hexdigest()[:11]


def summary(configs: list[TrialConfig], grid: Grid | None = None) -> str:
    """Human-readable table: trial count, fixed fields, counts per value of each varied field."""
    rows = [c.to_row() for c in configs]
    lines = [f"{len(configs)} trials" + (f" in grid '{grid.name}' ({grid.path})" if grid else "")]
    varied = [k for k in FIELDS if len({repr(r[k]) for r in rows}) > 1]
    fixed = {k: rows[0][k] for k in FIELDS if k not in varied}
    lines.append("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    epochs = sum(r["epochs"] for r in rows)
    lines.append(f"total epochs: {epochs}")
    width = max([len(k) for k in varied] + [5])
    lines.append(f"{'field':<{width}}  value: trials")
    for key in varied:
        counts = Counter(r[key] for r in rows)
        cells = "  ".join(f"{_fmt(v)}: {n}" for v, n in sorted(counts.items(), key=_sort_key))
        lines.append(f"{key:<{width}}  {cells}")
    if "optimizer" in varied and "lr" in varied:
        lines.append("lr per optimizer:")
        for opt in sorted({r["optimizer"] for r in rows}):
            lrs = sorted({r["lr"] for r in rows if r["optimizer"] == opt})
            lines.append(f"  {opt:<9} {len(lrs)} values: " + ", ".join(_fmt(v) for v in lrs))
    combos = Counter((r["norm"], r["update"], r["l2_scope"]) for r in rows)
    if len(combos) > 1:
        lines.append("(norm, update, l2_scope): trials")
        for (norm, update, scope), n in sorted(combos.items()):
            lines.append(f"  {norm:<9} {update:<11} {scope:<11} {n}")
    return "\n".join(lines)


def describe_diagonals(diagonals: dict[str, dict[float, list[tuple]]]) -> str:
    """One line per optimizer and iso-line product with its (lr, l2) points; '' if none."""
    lines = []
    for opt, by_product in diagonals.items():
        power = 1 / iso_slope(opt)
        invariant = "lr*l2" if power == 1 else f"lr^{power:g}*l2"
        for product, points in by_product.items():
            cells = " ".join(f"({_fmt(lr)}, {_fmt(l2)})" for lr, l2 in points)
            lines.append(f"  {opt:<9} {invariant}={_fmt(product)}: {cells}")
    return "\n".join(["iso-lines (lr, l2):", *lines]) if lines else ""


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _sort_key(item: tuple[Any, int]) -> tuple[int, Any]:
    v = item[0]
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))
