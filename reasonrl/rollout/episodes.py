"""What both engines record while episodes run: each row's completion tokens (the model's,
with their sampling log-probs, and the environment's), its turns, and its tool calls and
errors; and the ``Rollout`` they make. The engines differ in how they decode, not in this."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from reasonrl.envs.protocol import ToolCall
from reasonrl.envs.tools import Toolbox
from reasonrl.rollout.base import Episode, Rollout, right_padded


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
