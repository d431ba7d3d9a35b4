"""Tune's MLflow logger with a fused group's configs as readable params (needs mlflow)."""
from __future__ import annotations

from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from .trainable import group_configs


def group_params(config: dict[str, Any]) -> dict[str, Any]:
    """`trial/<field>` for a group of one grid point, `<trial_id>/<field>` for each member of a
    larger group (Tune would log the group's list of configs as one string)."""
    cfgs = group_configs(config)
    if len(cfgs) == 1:
        return {f"trial/{k}": v for k, v in cfgs[0].to_row().items()}
    return {f"{c.trial_id}/{k}": v for c in cfgs for k, v in c.to_row().items()}


class GroupMLflowLogger(MLflowLoggerCallback):
    """MLflowLoggerCallback whose params are `group_params` of the Tune trial's config."""

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:  # as the parent does: one MLflow run per Tune trial
            tags = {**self.tags, "trial_name": str(trial)}
            self._trial_runs[trial] = self.mlflow_util.start_run(
                tags=tags, run_name=str(trial)).info.run_id
        if not self.log_params_on_trial_end:
            self.mlflow_util.log_params(run_id=self._trial_runs[trial],
                                        params_to_log=group_params(trial.config))
