"""The ``fast`` engine: reasonrl's own decode loop around the policy's forward.

What it does that ``model.generate`` does not:

- **Group prefill.** Consecutive identical prompts (a GRPO group: the trainer passes each prompt
  ``completions_per_prompt`` times in a row) are prefilled once; the prefix KV cache is copied
  to the group's rows of the decode cache.
- **Static KV cache.** One transformers ``StaticCache`` of ``rows × (prompt + max_new_tokens)``
  allocated per shape and reused across calls; every decode step has the same shapes and
  addresses, and attention sees a 4-D additive mask built on the device from the prompt mask
  and the write offset (no mask building in Python, no host sync).
- **Sampling on the device**: temperature, top-k, top-p and greedy with torch ops only
  (Gumbel-max, no ``multinomial``; ``reasonrl.rollout.sampling``), from the global RNG or from
  per-completion seeds; finished rows emit pad and are masked.
- **CUDA graphs** (CUDA only): the whole decode step — forward, sampling, bookkeeping — is
  captured once per (row bucket, cache-length bucket, sampling settings) and replayed; rows are
  padded up to the bucket with finished dummy rows. The host checks "all rows done" every
  ``sync_every`` steps instead of every step. On CPU the same step runs eagerly.

It generates with the live weights of the module being trained (no copy): captured graphs read
the parameters' storage, which the optimizer updates in place; if a parameter is re-allocated
(``model.to``, ``load_state_dict(assign=True)``) the graphs are dropped and captured again.

Needs a causal LM whose transformers cache is all full-attention ``StaticLayer``s (Llama, Qwen2,
Mistral without sliding window, …) with ``sdpa`` or ``eager`` attention; tested with
transformers 5.24. Returned log-probs follow the ``hf`` engine's convention: the sampled
token's log-prob under ``softmax(logits / temperature)`` before top-k/top-p filtering
(temperature 1 when greedy).
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

from reasonrl.envs.tools import Toolbox
from reasonrl.rollout.base import Rollout, concat_rollouts, stop_and_pad_ids
from reasonrl.rollout.episodes import EpisodeRecords
from reasonrl.rollout.hf import completion_mask
from reasonrl.rollout.sampling import derive_seed, sample_tokens, seed_tensor

ROW_BUCKETS = (8, 16, 32, 64, 128, 256, 512)  # CUDA: beyond 512, multiples of 256
LENGTH_BUCKET = 128  # CUDA: cache length rounded up to a multiple of this
MAX_DECODERS = 2  # static caches (and their graphs) kept for reuse, least recently used dropped


@dataclass(frozen=True)
class Sampling:
    """One ``generate`` call's sampling settings (a key of the captured graphs)."""

    temperature: float
    top_p: float
    top_k: int
    greedy: bool
    seeded: bool  # noise from the rows' seeds, not the global RNG

    def __call__(
        self, logits: torch.Tensor, seeds: torch.Tensor, position: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """logits: [B, V], seeds: [B], position: the completion token's index → (ids [B],
        logp [B]); see ``sample_tokens``."""
        return sample_tokens(
            logits,
            self.temperature,
            self.top_p,
            self.top_k,
            self.greedy,
            seeds if self.seeded else None,
            position,
        )


@dataclass
class EngineStats:
    """Counters summed over ``generate`` calls (the bench reads them; tests check prefill rows)."""

    prefill_rows: int = 0  # sequences run through the prefill forward (one per group)
    prefill_tokens: int = 0  # their padded length summed
    prefill_s: float = 0.0
    observation_tokens: int = 0  # episodes: tool answers fed into the KV cache the rows hold
    decode_steps: int = 0  # decode forwards (a token per row; in episodes, or an answer)
    decode_s: float = 0.0
    graph_captures: int = 0
    capture_s: float = 0.0


@dataclass
class _Decoder:
    """The static tensors of one (rows, cache length) shape. R rows, L cache slots."""

    cache: StaticCache
    keep: torch.Tensor  # [R, L] bool: a real (non-padding) key at that slot
    slots: torch.Tensor  # [L] int64: 0..L-1
    tok: torch.Tensor  # [R, 1] int64: the token fed to the next step
    pos: torch.Tensor  # [R, 1] int64: its position id
    slot: torch.Tensor  # [] int64: the cache slot it is written to
    col: torch.Tensor  # [] int64: the output column the next token goes to
    done: torch.Tensor  # [R] bool
    seeds: torch.Tensor  # [R] int64: each row's sampling seed (unused when unseeded)
    out_ids: torch.Tensor  # [R, L] int64
    out_logp: torch.Tensor  # [R, L] float32
    graphs: dict[Sampling, Any] = field(default_factory=dict)  # CUDA graphs of the step

    def offsets(self) -> list[torch.Tensor]:
        return [layer.cumulative_length for layer in self.cache.layers]

    def snapshot(self) -> list[torch.Tensor]:
        return [t.clone() for t in (self.tok, self.pos, self.slot, self.col, self.done)] + [
            t.clone() for t in self.offsets()
        ]

    def restore(self, saved: list[torch.Tensor]) -> None:
        live = [self.tok, self.pos, self.slot, self.col, self.done, *self.offsets()]
        for dst, src in zip(live, saved, strict=True):
            dst.copy_(src)


def _bucket(n: int, buckets: tuple[int, ...], step: int) -> int:
    for b in buckets:
        if n <= b:
            return b
    return -(-n // step) * step


class FastEngine:
    """Rollouts from reasonrl's decode loop in chunks of at most ``batch_completions`` rows.

    ``cuda_graphs``: capture the decode step (default: on when the model is on CUDA; never on
    CPU). ``pad_shapes``: round rows and cache length up to buckets so that few shapes (and
    graphs) exist (default: with graphs). ``sync_every``: decode steps between "all rows
    finished?" checks (default 1 on CPU, 16 with graphs, where each check is a host sync).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_completions: int = 256,
        *,
        cuda_graphs: bool | None = None,
        pad_shapes: bool | None = None,
        sync_every: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_completions = batch_completions
        self.eos_ids, self.pad_id = stop_and_pad_ids(model, tokenizer)
        attn = getattr(model.config, "_attn_implementation", None)
        if attn not in ("sdpa", "eager"):
            raise ValueError(f"the fast engine needs sdpa or eager attention, not {attn!r}")
        self.device = next(model.parameters()).device
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs and on_cuda
        self.pad_shapes = self.cuda_graphs if pad_shapes is None else pad_shapes
        self.sync_every = sync_every or (16 if self.cuda_graphs else 1)
        # transformers renamed ``past_key_values`` to ``cache``; pass whichever forward takes.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(type(base).forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._eos = torch.tensor(self.eos_ids, device=self.device)
        self._decoders: OrderedDict[tuple[int, int], _Decoder] = OrderedDict()
        self._weights: tuple[int, ...] = ()
        self._pool: Any = None
        self.stats = EngineStats()

    @torch.no_grad()
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
        """Complete each prompt; with ``seeds`` (one per prompt), prompt i's completion is drawn
        from seeds[i] alone (see ``reasonrl.rollout.sampling``). With ``toolboxes`` and
        ``max_turns`` > 1, each completion is an episode (:meth:`_episodes`)."""
        episodes = toolboxes is not None and max_turns > 1
        weights = tuple(p.data_ptr() for p in self.model.parameters())
        if weights != self._weights:  # re-allocated parameters: captured graphs are stale
            self._decoders.clear()
            self._weights = weights
        sampling = Sampling(temperature, top_p, top_k, greedy, seeds is not None)
        row_seeds = (
            torch.zeros(len(prompts), dtype=torch.long, device=self.device)
            if seeds is None
            else seed_tensor(seeds, len(prompts), self.device)
        )
        was_training = self.model.training
        self.model.eval()
        step = self.batch_completions
        try:
            parts = [
                self._episodes(
                    prompts[i : i + step],
                    row_seeds[i : i + step],
                    toolboxes[i : i + step],
                    None if seeds is None else list(seeds[i : i + step]),
                    max_new_tokens,
                    max_turns,
                    sampling,
                )
                if episodes
                else self._generate_chunk(
                    prompts[i : i + step], row_seeds[i : i + step], max_new_tokens, sampling
                )
                for i in range(0, len(prompts), step)
            ]
        finally:
            self.model.train(was_training)
        return concat_rollouts(parts, self.pad_id)

    def _prefill_groups(
        self, prompts: list[str], seeds: torch.Tensor, max_new_tokens: int, sampling: Sampling
    ) -> tuple[_Decoder, torch.Tensor, torch.Tensor]:
        """Consecutive identical prompts form a group; each group is tokenized and prefilled
        once (:meth:`_prefill`). → the decoder, and each row's left-padded prompt ids and
        mask [B, P]."""
        unique: list[str] = []
        group_of: list[int] = []
        for p in prompts:
            if not unique or p != unique[-1]:
                unique.append(p)
            group_of.append(len(unique) - 1)
        enc = self.tokenizer(
            unique, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(self.device)
        groups = torch.tensor(group_of, device=self.device)
        t0 = time.perf_counter()
        d = self._prefill(
            enc["input_ids"], enc["attention_mask"], groups, seeds, max_new_tokens, sampling
        )
        self._sync()
        self.stats.prefill_rows += len(unique)
        self.stats.prefill_tokens += enc["input_ids"].numel()
        self.stats.prefill_s += time.perf_counter() - t0
        return d, enc["input_ids"][groups], enc["attention_mask"][groups]

    def _generate_chunk(
        self, prompts: list[str], seeds: torch.Tensor, max_new_tokens: int, sampling: Sampling
    ) -> Rollout:
        b = len(prompts)
        d, prompt_ids, prompt_mask = self._prefill_groups(prompts, seeds, max_new_tokens, sampling)
        t1 = time.perf_counter()
        captured = self.stats.capture_s
        written = 1  # the prefill sampled the first token
        while written < max_new_tokens:
            if written % self.sync_every == 0 and bool(d.done[:b].all()):
                break
            if self.cuda_graphs:
                self._replay(d, sampling)
            else:
                self._step(d, sampling)
            written += 1
        self._sync()
        self.stats.decode_steps += written - 1
        self.stats.decode_s += time.perf_counter() - t1 - (self.stats.capture_s - captured)

        ids = d.out_ids[:b, :written]
        mask = completion_mask(ids, self.eos_ids)
        width = int(mask.sum(-1).max())  # later columns (checked late) hold only pad
        ids, mask = ids[:, :width].clone(), mask[:, :width]
        logp = d.out_logp[:b, :width] * mask
        texts = self.tokenizer.batch_decode(
            ids * mask + self.pad_id * (1 - mask), skip_special_tokens=True
        )
        finished = torch.isin(ids, self._eos).any(-1)
        return Rollout(prompt_ids, prompt_mask, ids, mask, logp, texts, finished)

    def _episodes(
        self,
        prompts: list[str],
        seeds: torch.Tensor,
        toolboxes: Sequence[Toolbox],
        turn0_seeds: list[int] | None,
        budget: int,
        max_turns: int,
        sampling: Sampling,
    ) -> Rollout:
        """Episodes in one decode loop over one KV cache; the same turns, tokens, seeds and
        budget rule as ``HFEngine._episodes`` (which says them), so the engines agree.

        Rows finish turns at different times, so none waits for a turn boundary: each row is a
        small state machine, and every step feeds every live row, in one batched forward, the
        tokens it has to feed — the token it just drew, followed after a call by the tool's
        answer, or what is left of an answer. The step is as wide as the longest of those; a
        row feeding fewer leaves holes (slots masked out, positions not advanced) and draws
        from its last fed token. So an answer enters the cache the row already holds, its
        tokens only, never the prefix again. Holes cost cache slots: the cache holds
        ``prompt + 2 × budget`` slots, and once ``budget`` slots have gone to holes the
        answers are fed a token per step (each step then advances every live row by one of
        its ``budget`` tokens, so the cache never runs out). The host reads the drawn tokens
        every step to spot a turn's end (EOS, or the tag protocol's closing tag) and run the
        tool, in the toolbox's protocol (a chat template's tool message too): episodes decode
        eagerly.
        """
        tok, n = self.tokenizer, len(prompts)
        stop = toolboxes[0].protocol.stop  # one format per run
        d, prompt_ids, prompt_mask = self._prefill_groups(prompts, seeds, 2 * budget, sampling)
        t0, steps, spare = time.perf_counter(), 0, budget
        rows, dev = d.tok.shape[0], self.device  # rows: n, or its bucket (dummy rows)
        drawn, drawn_logp = d.out_ids[:n, 0].tolist(), d.out_logp[:n, 0].tolist()
        rec = EpisodeRecords(n)
        turn_ids: list[list[int]] = [[] for _ in range(n)]  # the model tokens of the turn
        queue: list[list[int]] = [[] for _ in range(n)]  # tokens not yet fed to the cache
        turn, live = [0] * n, list(range(n))
        row_seeds = list(turn0_seeds or [0] * n) + [0] * (rows - n)
        while live:
            going = []
            for i in live:
                if queue[i]:  # still feeding an answer: this step's draw is not the row's
                    going.append(i)
                    continue
                rec.sampled(i, [drawn[i]], [drawn_logp[i]])
                turn_ids[i].append(drawn[i])
                queue[i] = [drawn[i]]
                ended = drawn[i] in self.eos_ids
                at_stop = stop is not None and stop in tok.decode(turn_ids[i][-len(stop) :])
                if not (ended or at_stop) and len(rec.ids[i]) < budget:
                    going.append(i)
                    continue
                text = tok.decode(turn_ids[i], skip_special_tokens=True)
                rec.turns[i].append(("model", text))
                turn_ids[i] = []
                call = toolboxes[i].protocol.call_in(text, ended)
                if call is None:  # an answer (finished), or cut by the budget
                    rec.finished[i] = ended
                    continue
                if turn[i] == max_turns - 1:
                    continue  # a call with no turn left to read it: not run
                answer_ids = rec.respond(i, toolboxes[i], call, tok, self.eos_ids, budget)
                if answer_ids is None:
                    continue  # no room left for a model token after the answer
                queue[i] += answer_ids
                self.stats.observation_tokens += len(answer_ids)
                turn[i] += 1
                if turn0_seeds is not None:
                    row_seeds[i] = derive_seed("turn", turn0_seeds[i], turn[i])
                going.append(i)
            live = going
            if not live:
                break
            width = min(max(len(queue[i]) for i in live), 1 + spare)
            spare -= width - 1
            fed = [0] * rows
            feed = torch.full((rows, width), self.pad_id, dtype=torch.long)
            for i in live:
                chunk, queue[i] = queue[i][:width], queue[i][width:]
                feed[i, : len(chunk)] = torch.tensor(chunk)
                fed[i] = len(chunk)
            count = torch.tensor(fed, device=dev)
            cols = torch.arange(width, device=dev)
            real = cols < count.unsqueeze(-1)  # [R, W]: False on holes
            d.keep[:, d.slot + cols] = real  # slot is a plain counter here (no graph)
            seen = d.keep.unsqueeze(1) & (d.slots <= d.slot + cols.unsqueeze(-1))  # [R, W, L]
            dtype = d.cache.layers[0].keys.dtype
            mask = torch.zeros(seen.shape, dtype=dtype, device=dev)
            mask = mask.masked_fill(~seen, torch.finfo(dtype).min).unsqueeze(1)
            logits = self._forward(feed.to(dev), mask, d.pos + cols, d.cache)
            last = logits[torch.arange(rows, device=dev), (count - 1).clamp(min=0)]
            # The draw after this step is token len(turn_ids[i]) of the row's current turn.
            position = torch.tensor([len(turn_ids[i]) for i in range(n)] + [0] * (rows - n))
            d.seeds.copy_(seed_tensor(row_seeds, rows, dev))
            next_ids, next_logp = sampling(last, d.seeds, position.to(dev))
            drawn, drawn_logp = next_ids[:n].tolist(), next_logp[:n].tolist()
            d.pos.add_(count.unsqueeze(-1))
            d.slot.add_(width)
            steps += 1
        self.stats.decode_steps += steps
        self.stats.decode_s += time.perf_counter() - t0
        return rec.rollout(prompt_ids, prompt_mask, tok, self.pad_id, self.device)

    def _prefill(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        groups: torch.Tensor,
        seeds: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
    ) -> _Decoder:
        """Run the U unique prompts, copy their keys and values to their groups' rows of a
        decoder and sample each row's first token. ids, mask: [U, P] left-padded; groups,
        seeds: [B], the unique prompt and the sampling seed of each row."""
        u, p = ids.shape
        prefix = StaticCache(config=self.model.config, max_cache_len=p)
        logits = self._forward(ids, mask, (mask.long().cumsum(-1) - 1).clamp(min=0), prefix)[:, -1]
        b, length = len(groups), p + max_new_tokens
        rows = b
        if self.pad_shapes:
            rows = _bucket(b, ROW_BUCKETS, 256)
            length = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
        # Rows past b pad the batch up to its bucket: copies of group 0, finished from the start.
        index = torch.cat([groups, groups.new_zeros(rows - b)])
        d = self._decoder(rows, length, prefix)
        for src, dst in zip(prefix.layers, d.cache.layers, strict=True):
            dst.keys[:, :, :p].copy_(src.keys.index_select(0, index))
            dst.values[:, :, :p].copy_(src.values.index_select(0, index))
            dst.cumulative_length.fill_(p)
        d.keep[:, :p].copy_(mask.bool().index_select(0, index))
        d.keep[:, p:] = True
        d.seeds[:b].copy_(seeds)
        d.seeds[b:] = 0
        first, first_logp = sampling(logits.index_select(0, index), d.seeds, 0)
        d.done.copy_(torch.isin(first, self._eos))
        d.done[b:] = True
        d.out_ids[:, 0] = first
        d.out_logp[:, 0] = first_logp
        d.tok.copy_(first.unsqueeze(-1))
        d.pos.copy_(mask.sum(-1, keepdim=True).index_select(0, index))
        d.slot.fill_(p)
        d.col.fill_(1)
        return d

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: StaticCache
    ) -> torch.Tensor:
        """ids, pos: [R, T]; mask: [R, T] (2-D, prefill) or [R, 1, T, L] (additive) → the
        logits [R, T, V] (the last position's only [R, 1, V] when T is the prompt's), writing
        the T tokens' keys and values into ``cache``."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1 if mask.dim() == 2 else 0,
            **{self._cache_kw: cache},
        )
        return out.logits

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _decoder(self, rows: int, length: int, prefix: StaticCache) -> _Decoder:
        """The static tensors for ``rows × length``, allocated on first use."""
        key = (rows, length)
        if key in self._decoders:
            self._decoders.move_to_end(key)
            return self._decoders[key]
        if len(self._decoders) >= MAX_DECODERS:
            self._decoders.popitem(last=False)
        cache = StaticCache(config=self.model.config, max_cache_len=length)
        for src, dst in zip(prefix.layers, cache.layers, strict=True):
            if type(src) is not StaticLayer or type(dst) is not StaticLayer:
                raise ValueError("the fast engine needs a model whose layers all attend fully")
            shape = (rows, *src.keys.shape[1:])
            dst.lazy_initialization(src.keys.new_empty(shape), src.values.new_empty(shape))
        dev = self.device
        d = _Decoder(
            cache=cache,
            keep=torch.zeros(rows, length, dtype=torch.bool, device=dev),
            slots=torch.arange(length, device=dev),
            tok=torch.zeros(rows, 1, dtype=torch.long, device=dev),
            pos=torch.zeros(rows, 1, dtype=torch.long, device=dev),
            slot=torch.zeros((), dtype=torch.long, device=dev),
            col=torch.zeros((), dtype=torch.long, device=dev),
            done=torch.zeros(rows, dtype=torch.bool, device=dev),
            seeds=torch.zeros(rows, dtype=torch.long, device=dev),
            out_ids=torch.full((rows, length), self.pad_id, dtype=torch.long, device=dev),
            out_logp=torch.zeros(rows, length, dtype=torch.float32, device=dev),
        )
        self._decoders[key] = d
        return d

    def _step(self, d: _Decoder, sampling: Sampling) -> None:
        """One decode step, in place: feed ``tok`` at ``slot``, sample the next token into
        column ``col``. Only device tensors change, so the step can be captured as a graph."""
        dtype = d.cache.layers[0].keys.dtype
        visible = d.keep & (d.slots <= d.slot)
        mask = torch.zeros(visible.shape, dtype=dtype, device=self.device)
        mask = mask.masked_fill(~visible, torch.finfo(dtype).min)[:, None, None, :]
        # col is the index of the completion token drawn, whatever the row's left padding.
        tok, logp = sampling(self._forward(d.tok, mask, d.pos, d.cache)[:, -1], d.seeds, d.col)
        tok = tok.masked_fill(d.done, self.pad_id)
        logp = logp.masked_fill(d.done, 0.0)
        col = d.col.view(1)
        d.out_ids.index_copy_(1, col, tok.unsqueeze(-1))
        d.out_logp.index_copy_(1, col, logp.unsqueeze(-1))
        d.done.logical_or_((tok.unsqueeze(-1) == self._eos).any(-1))  # isin may sync on CUDA
        d.tok.copy_(tok.unsqueeze(-1))
        d.pos.add_(1)
        d.slot.add_(1)
        d.col.add_(1)

    def _replay(self, d: _Decoder, sampling: Sampling) -> None:
        """Run the step as a CUDA graph, capturing it on first use for this shape and sampling.

        Capture follows torch's recipe: warm up on a side stream, then record. The warm-up step
        really runs, so the step's state (and the cache's write offsets) is restored after it;
        the cache slot it wrote is rewritten before anything attends to it.
        """
        graph = d.graphs.get(sampling)
        if graph is None:
            t0 = time.perf_counter()
            saved = d.snapshot()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._step(d, sampling)
            torch.cuda.current_stream(self.device).wait_stream(side)
            d.restore(saved)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):  # records, does not run
                self._step(d, sampling)
            d.graphs[sampling] = graph
            self._sync()
            self.stats.graph_captures += 1
            self.stats.capture_s += time.perf_counter() - t0
        graph.replay()
