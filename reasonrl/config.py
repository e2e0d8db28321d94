"""Typed run configuration: YAML recipes, dotted command-line overrides, helpful errors.

A recipe is a YAML file whose keys mirror :class:`RunConfig`. Every field is documented once,
beside its definition. Sizes are named by their unit (``prompts_per_step``,
``completions_per_prompt``, ``micro_batch_completions``) so that nobody has to guess whether a
batch counts prompts or completions.

This module must not import torch: ``reasonrl run`` validates the recipe before anything heavy
is loaded, so a typo fails in well under a second.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelInit(_Strict):
    """Architecture of a model trained from scratch (the bundled model's cold start)."""

    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 256
    vocab_size: int = 384  # target size of the BPE tokenizer trained on the SFT corpus


class ModelConfig(_Strict):
    path: str = (
        "bundled"  # "bundled" (the packaged tiny checkpoint), a local directory, or a hub id
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available, else cpu
    init: ModelInit | None = None  # set to train a new model (and tokenizer) from scratch


class TaskConfig(_Strict):
    source: Literal["reasoning_gym", "jsonl"] = "reasoning_gym"
    name: str = "chain_sum"  # reasoning-gym dataset name (source: reasoning_gym)
    params: dict[str, Any] = Field(default_factory=dict)  # passed to reasoning_gym.create_dataset
    train_path: str | None = None  # JSONL with "prompt" and "answer" fields (source: jsonl)
    eval_path: str | None = None
    train_size: int = Field(20_000, gt=0)  # problems generated for training
    eval_size: int = Field(500, gt=0)  # held-out problems, disjoint from the training ones
    split_seed: int = 1234  # fixes both splits independently of the run's seed
    prompt: Literal["r1", "plain"] = "r1"  # r1: ask for <think>…</think> <answer>…</answer>
    chat_template: Literal["auto", "on", "off"] = "auto"  # auto: use the tokenizer's if it has one

    @model_validator(mode="after")
    def _paths_for_jsonl(self) -> TaskConfig:
        if self.source == "jsonl" and not (self.train_path and self.eval_path):
            raise ValueError("task.source=jsonl needs task.train_path and task.eval_path")
        return self


class SamplingConfig(_Strict):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0 disables top-k


class RolloutConfig(SamplingConfig):
    engine: Literal["hf"] = "hf"  # transformers.generate
    batch_completions: int = Field(256, gt=0)  # completions generated per generate() call


class RLConfig(_Strict):
    algo: Literal["grpo"] = "grpo"
    steps: int = Field(100, ge=0)  # optimizer steps (one batch of rollouts each)
    prompts_per_step: int = Field(16, gt=0)
    completions_per_prompt: int = Field(8, ge=2)  # the group size
    micro_batch_completions: int = Field(32, gt=0)  # completions per forward/backward pass
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to learning_rate * min_lr_ratio
    beta: float = Field(0.04, ge=0)  # coefficient of the k3 KL to the frozen reference
    clip_eps_low: float = Field(0.2, gt=0)
    clip_eps_high: float = Field(0.2, gt=0)
    scale_rewards: Literal["group", "batch", "none"] = "group"
    std_eps: float = Field(1e-4, gt=0)  # added to the group std (TRL's convention)
    loss_agg: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> RLConfig:
        total = self.prompts_per_step * self.completions_per_prompt
        if total % self.micro_batch_completions:
            raise ValueError(
                f"micro_batch_completions ({self.micro_batch_completions}) must divide "
                f"prompts_per_step * completions_per_prompt ({total})"
            )
        return self


class SFTConfig(_Strict):
    data: Literal["traces", "jsonl"] = "traces"  # traces: step-by-step solutions of the task
    train_path: str | None = None  # JSONL with "prompt" and "completion" (data: jsonl)
    steps: int = Field(1000, ge=0)
    examples_per_step: int = Field(64, gt=0)
    micro_batch_examples: int = Field(64, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> SFTConfig:
        if self.examples_per_step % self.micro_batch_examples:
            raise ValueError("micro_batch_examples must divide examples_per_step")
        return self


class EvalConfig(_Strict):
    before: bool = True  # evaluate the starting model on the held-out split
    after: bool = True  # and the trained one
    every: int = Field(0, ge=0)  # also evaluate every N steps during training (0: never)
    limit: int | None = None  # evaluate on the first N held-out problems only
    every_limit: int = Field(200, gt=0)  # held-out problems used by the evals during training
    k: int = Field(8, ge=0)  # samples per problem for pass@k (0: greedy pass@1 only)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    batch_completions: int = Field(512, gt=0)


class LogConfig(_Strict):
    every: int = Field(1, gt=0)  # write metrics every N steps
    samples_every: int = Field(10, gt=0)  # write completions to samples.jsonl every N steps
    samples_per_log: int = Field(4, ge=0)
    checkpoint_every: int = Field(50, ge=0)  # 0: only at the end and on Ctrl-C
    keep_checkpoints: int = Field(2, gt=0)
    tensorboard: bool = True


class RunConfig(_Strict):
    name: str = "run"
    stage: Literal["rl", "sft"] = "rl"
    seed: int = 0
    out: str | None = None  # run directory; default runs/<name>
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: dict[str, float] = Field(default_factory=lambda: {"answer": 1.0, "format": 0.1})
    rl: RLConfig = Field(default_factory=RLConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def derived_sizes(self) -> dict[str, int]:
        """The totals implied by the per-unit sizes, printed at the start of a run."""
        if self.stage == "sft":
            s = self.sft
            return {
                "examples_per_step": s.examples_per_step,
                "accumulation_steps": s.examples_per_step // s.micro_batch_examples,
                "total_examples": s.steps * s.examples_per_step,
            }
        r = self.rl
        per_step = r.prompts_per_step * r.completions_per_prompt
        return {
            "completions_per_step": per_step,
            "accumulation_steps": per_step // r.micro_batch_completions,
            "total_prompts": r.steps * r.prompts_per_step,
            "total_completions": r.steps * per_step,
        }


# --------------------------------------------------------------------------- loading


def bundled_recipes() -> dict[str, Path]:
    """Recipes shipped inside the package, by file stem."""
    root = resources.files("reasonrl") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe path as given, else a bundled recipe of that name (``quickstart``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = bundled_recipes()
    if path.stem in shipped and path.name in (path.stem, f"{path.stem}.yaml"):
        return shipped[path.stem]
    hint = difflib.get_close_matches(path.stem, list(shipped), n=1)
    extra = f"; did you mean the bundled recipe '{hint[0]}'?" if hint else ""
    raise ConfigError(f"recipe file not found: {path}{extra}")


_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"rl.learning_rate=5e-6"`` → ``(["rl", "learning_rate"], 5e-06)``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads "5e-6" as a string; numbers are what people mean.
    if isinstance(value, str) and _FLOAT_RE.match(value):
        value = float(value)
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` into a nested recipe dict (copied, not mutated)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if not isinstance(child, dict):
                child = {}
                node[k] = child
            node = child
        node[keys[-1]] = value
    return data


def _fields_at(loc: tuple[Any, ...]) -> list[str] | None:
    """The valid field names of the config model that holds ``loc[-1]``."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = getattr(ann, "__args__", (ann,))
        sub = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if sub is None:
            return None
        model = sub
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            fields = _fields_at(tuple(e["loc"])) or []
            hint = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1, cutoff=0.5)
            parent = ".".join(str(p) for p in e["loc"][:-1])
            suggestion = f"{parent + '.' if parent else ''}{hint[0]}" if hint else None
            msg = f"  unknown key '{path}'"
            msg += f" — did you mean '{suggestion}'?" if suggestion else f" (valid: {fields})"
        else:
            msg = f"  {path or '<root>'}: {e['msg']}"
            if "input" in e and e["type"] != "missing":
                msg += f" (got {e['input']!r})"
        lines.append(msg)
    return "\n".join(lines)


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe (path or bundled name), apply overrides, validate; ConfigError on any issue."""
    data: dict[str, Any] = {}
    source = "overrides"
    if recipe is not None:
        path = resolve_recipe_path(recipe)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"recipe {path} must be a mapping of keys to values")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def dump_config(cfg: RunConfig) -> str:
    """The whole resolved config as YAML (saved in every run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
