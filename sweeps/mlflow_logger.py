"""--mlflow: one MLflow run per Tune trial, through the public `mlflow` client only (needs
mlflow). A fused group's configs are logged as readable params, and each epoch's numbers as
metrics at step = epoch (which continues across resumed runs)."""
from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from .trainable import group_configs

# MLflow's per-request limits for log_batch (mlflow.utils.validation)
MAX_PARAMS, MAX_METRICS = 100, 1000


def group_params(config: dict[str, Any]) -> dict[str, Any]:
    """`trial/<field>` for a group of one grid point, `<trial_id>/<field>` for each member of a
    larger group (Tune would log the group's list of configs as one string)."""
    cfgs = group_configs(config)
    if len(cfgs) == 1:
        return {f"trial/{k}": v for k, v in cfgs[0].to_row().items()}
    return {f"{c.trial_id}/{k}": v for c in cfgs for k, v in c.to_row().items()}


class GroupMLflowLogger(Callback):
    """Per Tune trial an MLflow run named by the trial (its group name) in the experiment
    `experiment_name`: params `group_params`, every numeric result per epoch, and the end
    status (FINISHED or FAILED)."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name
        self.client: Any = None
        self.experiment_id = ""
        self.runs: dict[str, str] = {}  # Tune trial id -> MLflow run id

    def __getstate__(self) -> dict:  # Tune pickles callbacks: keep the settings, not the client
        return {"tracking_uri": self.tracking_uri, "experiment_name": self.experiment_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["tracking_uri"], state["experiment_name"])

    def setup(self, **info: Any) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        self.experiment_id = (experiment.experiment_id if experiment is not None
                              else self.client.create_experiment(self.experiment_name))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id in self.runs:  # a retry logs into the same run
            return
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=str(trial),
                                     tags={"trial_name": str(trial)})
        self.runs[trial.trial_id] = run.info.run_id
        params = [Param(k, str(v)) for k, v in group_params(trial.config).items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(run.info.run_id, params=params[i:i + MAX_PARAMS])

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        from mlflow.entities import Metric

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        now, step = int(time.time() * 1000), int(result.get("epoch") or 0)
        metrics = [Metric(k, float(v), now, step) for k, v in result.items()
                   if isinstance(v, (int, float))]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end_run(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.end_run(trial, "FAILED")

    def end_run(self, trial: Any, status: str) -> None:
        """Close the trial's MLflow run with this status."""
        run_id = self.runs.pop(trial.trial_id, None)
        if run_id is not None:
            self.client.set_terminated(run_id, status)
