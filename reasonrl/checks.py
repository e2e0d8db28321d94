"""The check phase: every model, data file and verifier a recipe refers to, checked before
anything slow (loading a model, the "before" evaluation, a pipeline's first stage).

Cheap by design: files are read but no model is loaded (safetensors headers only), verifiers
are imported and their options bound but not built, ``datasets`` datasets are looked for but
not loaded, and hub ids are taken as given (nothing is downloaded). A failure is a
:class:`ConfigError` that starts with the recipe key it came from.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from reasonrl.config import ConfigError, PreferenceDataConfig, RunConfig, TaskConfig


def _at(key: str, check: Callable[..., Any], *args: Any) -> None:
    """Run ``check(*args)``; a ConfigError it raises is prefixed with the recipe ``key``."""
    try:
        check(*args)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from e


def _check_task(task: TaskConfig, key: str) -> None:
    from reasonrl.tasks.files import check_dataset_path
    from reasonrl.tasks.sources import read_jsonl_samples

    for i, entry in enumerate(task.mix):
        _check_task(entry, f"{key}.mix.{i}")
    if task.source == "jsonl":
        _at(f"{key}.train_path", read_jsonl_samples, task.train_path)
        _at(f"{key}.eval_path", read_jsonl_samples, task.eval_path)
    elif task.source == "dataset":
        _at(f"{key}.path", check_dataset_path, task.path)


def _check_pairs(data: PreferenceDataConfig, key: str) -> None:
    from reasonrl.tasks.files import check_dataset_path, jsonl_rows

    if data.source == "jsonl":
        _at(f"{key}.train_path", list, jsonl_rows(data.train_path, "preference file"))
        _at(f"{key}.eval_path", list, jsonl_rows(data.eval_path, "preference file"))
    elif data.source == "dataset":
        _at(f"{key}.train_path", check_dataset_path, data.train_path)


def check_config(cfg: RunConfig, produced: Collection[Path] = ()) -> None:
    """Check every reference of ``cfg`` that its stage uses: the trackers of ``log.report_to``
    (installed), the model options the rm stage cannot take, ``model.path``, the PPO critic,
    the task's and the stage's data files, and (RL) the advantage estimator and each reward's
    verifier and reward model.
    ``produced``: model directories that earlier stages of a pipeline will write (not checked
    yet)."""
    from reasonrl.algos.advantages import get_advantage
    from reasonrl.logging import check_trackers
    from reasonrl.models.loading import resolve_model_path
    from reasonrl.rewards.registry import check_verifier
    from reasonrl.tasks.sources import read_sft_pairs

    def model(key: str, path: str) -> None:
        if Path(path) not in produced:
            _at(key, resolve_model_path, path)

    check_trackers(cfg.log.report_to)
    if cfg.stage == "rm" and cfg.model.lora is not None and cfg.rm.head != "value":
        raise ConfigError("model.lora in the rm stage needs rm.head=value")
    if cfg.stage == "rm" and cfg.model.gradient_checkpointing:
        # it turns off the KV cache that the rm stage's pair scoring shares between responses
        raise ConfigError("model.gradient_checkpointing is not supported by the rm stage")
    if cfg.model.init is None:
        model("model.path", cfg.model.path)
    if cfg.stage != "rm" or cfg.rm.data.source == "generated":
        _check_task(cfg.task, "task")
    if cfg.stage == "sft" and cfg.sft.data == "jsonl":
        if not cfg.sft.train_path:
            raise ConfigError("sft.data=jsonl needs sft.train_path")
        _at("sft.train_path", read_sft_pairs, cfg.sft.train_path)
    if cfg.stage in ("rm", "dpo"):
        _check_pairs(cfg.rm.data if cfg.stage == "rm" else cfg.dpo.data, f"{cfg.stage}.data")
    if cfg.stage != "rl":
        return
    _at("algo.advantage", get_advantage, cfg.algo.advantage)
    if cfg.algo.name == "ppo" and cfg.algo.critic_path:
        model("algo.critic_path", cfg.algo.critic_path)
    for name, spec in cfg.rewards.items():
        verifier = spec.verifier or name
        _at(f"rewards.{name}", functools.partial(check_verifier, verifier, **spec.options))
        if verifier == "reward_model" and "path" in spec.options:
            model(f"rewards.{name}.options.path", str(spec.options["path"]))
