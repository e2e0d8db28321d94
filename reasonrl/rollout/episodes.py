"""What the engines record while episodes run: each row's completion tokens (the model's,
with their sampling log-probs, and the environment's), its turns, and its tool calls and
errors; and the ``Rollout`` they make. The engines differ in how they decode, not in this.

``run_turns`` is the loop of the engines that decode a whole turn per call (``hf``, ``vllm``);
``fast`` runs its episodes token by token in its own KV cache, by the same rules."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reasonrl.envs.protocol import ToolCall
from reasonrl.envs.tools import Toolbox
from reasonrl.rollout.base import Episode, Rollout, right_padded
from reasonrl.rollout.sampling import derive_seed

# one turn of each row still going: (contexts as token ids, each row's room in tokens, each
# row's seed or None, the protocol's stop text or None) -> each row's tokens through the turn's
# end (EOS, the stop text, or the room) and their log-probs
Turn = Callable[
    [list[list[int]], list[int], list[int] | None, str | None],
    tuple[list[list[int]], list[list[float]]],
]


class EpisodeRecords:
    """The completions of ``n`` episodes as they grow, token by token or turn by turn."""

    def __init__(self, n: int) -> None:
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.model: list[list[int]] = [[] for _ in range(n)]  # 1: the model's token
        self.logps: list[list[float]] = [[] for _ in range(n)]
        self.turns: list[list[tuple[str, str]]] = [[] for _ in range(n)]
        self.calls: list[Counter[str]] = [Counter() for _ in range(n)]
        self.errors: list[Counter[str]] = [Counter() for _ in range(n)]
        self.finished = [False] * n

    def sampled(self, i: int, tokens: list[int], logps: list[float]) -> None:
        """Tokens row ``i``'s model drew, with their log-probs."""
        self.ids[i] += tokens
        self.model[i] += [1] * len(tokens)
        self.logps[i] += logps

    def respond(
        self,
        i: int,
        box: Toolbox,
        call: ToolCall | str,
        tokenizer: Any,
        eos_ids: list[int],
        budget: int,
    ) -> list[int] | None:
        """Run the call row ``i``'s last turn made (a parse error comes as its message), count
        it under the tool it reached ("unknown", not a name the model made up) and its error
        kind, and append the environment's answer in the box's protocol, as context that is
        never trained on. Returns the answer's tokens, or None when they would leave no room
        for a model token within ``budget`` (nothing appended)."""
        observation = box.call(call)
        self.calls[i][observation.tool or "unknown"] += 1
        if observation.error:
            self.errors[i][observation.error] += 1
        box.messages.append({"role": "assistant", "content": self.turns[i][-1][1]})
        answer_ids = box.protocol.answer_ids(
            tokenizer, box.messages, box.schemas, observation, eos_ids
        )
        if len(self.ids[i]) + len(answer_ids) >= budget:
            return None
        box.messages.append({"role": "tool", "name": observation.tool, "content": observation.text})
        self.turns[i].append(("tool", box.protocol.answer_text(observation)))
        self.ids[i] += answer_ids
        self.model[i] += [0] * len(answer_ids)
        self.logps[i] += [0.0] * len(answer_ids)
        return answer_ids

    def rollout(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        tokenizer: Any,
        pad_id: int,
        device: torch.device | str,
    ) -> Rollout:
        """The episodes as a ``Rollout``: completions right-padded to the longest."""
        return Rollout(
            prompt_ids,
            prompt_mask,
            right_padded(self.ids, pad_id, torch.long, device),
            right_padded([[1] * len(row) for row in self.ids], 0, torch.long, device),
            right_padded(self.logps, 0.0, torch.float32, device),
            tokenizer.batch_decode(self.ids, skip_special_tokens=True),
            torch.tensor(self.finished, device=device),
            right_padded(self.model, 0, torch.long, device),
            [
                Episode(t, dict(c), dict(e))
                for t, c, e in zip(self.turns, self.calls, self.errors, strict=True)
            ],
        )


def run_turns(
    turn: Turn,
    tokenizer: Any,
    eos_ids: list[int],
    prompt_ids: list[list[int]],
    toolboxes: Sequence[Toolbox],
    max_turns: int,
    budget: int,
    seeds: Sequence[int] | None,
) -> EpisodeRecords:
    """Episodes, turn by turn: the rows still going generate until EOS, a tool call's closing
    tag or the ``budget`` of completion tokens; each call's answer (the toolbox's protocol's
    ``answer_ids``: the tag protocol's ``<result>`` tokenized on its own, or a chat template's
    tool message) is appended as environment tokens (model_mask 0, log-prob 0), and the row goes
    on with its whole context fed back as tokens, never re-tokenized from text. Turn t of
    completion i draws with seed ``derive_seed("turn", seeds[i], t)`` (turn 0 with seeds[i]
    itself). An episode ends at EOS without a call (finished), at the budget (an answer that
    would leave no room for a model token is not appended) or with a call in its last turn (not
    run; neither finishes)."""
    rec = EpisodeRecords(len(prompt_ids))
    going = list(range(len(prompt_ids)))
    stop = toolboxes[0].protocol.stop  # one format per run
    for t in range(max_turns):
        if not going:
            break
        turn_seeds = None
        if seeds is not None:
            turn_seeds = [seeds[i] if t == 0 else derive_seed("turn", seeds[i], t) for i in going]
        room = [budget - len(rec.ids[i]) for i in going]
        new, new_logp = turn([prompt_ids[i] + rec.ids[i] for i in going], room, turn_seeds, stop)
        after = []
        for i, tokens, lp in zip(going, new, new_logp, strict=True):
            rec.sampled(i, tokens, lp)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            rec.turns[i].append(("model", text))
            ended = bool(tokens) and tokens[-1] in eos_ids
            call = toolboxes[i].protocol.call_in(text, ended)
            if call is None:  # an answer (finished), or cut by the budget
                rec.finished[i] = ended
                continue
            if t == max_turns - 1:
                continue  # a call with no turn left to read it
            if rec.respond(i, toolboxes[i], call, tokenizer, eos_ids, budget) is not None:
                after.append(i)
        going = after
    return rec
