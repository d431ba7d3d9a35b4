"""Where users watch runs: Tune's TensorBoard logger callback and our MLflow callback
(optional packages, the `logging` extra)."""
from __future__ import annotations

from typing import Any

from l2bn.schema import LAYERS, TEST_COLUMNS, TRAIN_COLUMNS, Row, layer_column

from .errors import SweepError

# With --tensorboard / --mlflow: each member's columns a user watching a run wants as curves.
WATCHED = ("test_error", "diverged") + TRAIN_COLUMNS[:2] + TEST_COLUMNS[:1] + ("images_per_s",) + tuple(
    layer_column(layer, m) for layer in LAYERS
    for m in ("w_norm", "unit_norm", "angular_update", "pred_angular_update", "eff_lr"))


def watched_metrics(rows: list[Row], keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` of each member's epoch row; prefixed `<trial_id>/` when the group has several."""
    if len(rows) == 1:
        return {k: rows[0][k] for k in keys if k in rows[0]}
    return {f"{r['trial_id']}/{k}": r[k] for r in rows for k in keys if k in r}


def watch_callbacks(opts: Any) -> list:
    """The TensorBoard and MLflow callbacks, as asked for (optional packages: the `logging`
    extra); SweepError naming the package when it is missing."""
    callbacks = []
    try:
        if opts.tensorboard:
            import tensorboardX  # noqa: F401 - TBXLoggerCallback logs nothing without it
            from ray.tune.logger import TBXLoggerCallback
            callbacks.append(TBXLoggerCallback())
        if opts.mlflow:
            from .mlflow_logger import GroupMLflowLogger
            check_mlflow(opts.mlflow)
            callbacks.append(GroupMLflowLogger(tracking_uri=opts.mlflow, experiment_name=opts.name))
    except ImportError as exc:
        raise SweepError(f"--tensorboard/--mlflow need {exc.name or exc}: "
                         'pip install -e ".[logging]"') from None
    return callbacks


def check_mlflow(uri: str) -> None:
    """Open a local MLflow store once before any trial, so a refused URI is one line, not a
    traceback from inside Tune (a server URI is left to MLflow's own retries)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://", "databricks")):
        return
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MlflowException and whatever a store raises
        raise SweepError(f"--mlflow {uri}: {' '.join(str(exc).split())[:1000]}") from None
