"""Where users watch runs: Tune's TensorBoard logger callback and our MLflow callback
(optional packages, the `logging` extra)."""
from __future__ import annotations

from typing import Any

from .errors import SweepError


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
