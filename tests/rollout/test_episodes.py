import torch

from reasonrl.envs import Toolbox, calculator
from reasonrl.envs.protocol import ToolCall
from reasonrl.models import load_tokenizer
from reasonrl.rollout.episodes import EpisodeRecords


def test_records_make_a_rollout_with_the_answer_as_untrained_context():
    tok = load_tokenizer("bundled")
    rec = EpisodeRecords(2)
    box = Toolbox([calculator])
    rec.sampled(0, [5, 6], [-0.5, -0.25])
    rec.turns[0].append(("model", "<tool>calculator 2+3</tool>"))
    call = ToolCall("calculator", "2+3")
    assert rec.respond(0, box, call, tok, [tok.eos_token_id], budget=2) is None  # no room
    assert rec.ids[0] == [5, 6] and rec.calls[0] == {"calculator": 1}  # run, not appended
    answer = rec.respond(0, box, call, tok, [tok.eos_token_id], budget=64)
    assert tok.decode(answer) == "<result>5</result>"
    assert box.messages[-1] == {"role": "tool", "name": "calculator", "content": "5"}
    rec.sampled(0, [9], [-1.0])
    rec.sampled(1, [4], [-2.0])
    rec.turns[1].append(("model", "<tool></tool>"))
    # a parse error is counted under "unknown"; its answer left no room here
    assert rec.respond(1, box, "the call names no tool", tok, [], budget=1) is None
    rec.finished[0] = True
    ro = rec.rollout(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), tok, 0, "cpu")
    k = len(answer)
    assert ro.completion_ids.tolist() == [[5, 6, *answer, 9], [4] + [0] * (k + 2)]
    assert ro.model_mask.tolist() == [[1, 1] + [0] * k + [1], [1] + [0] * (k + 2)]
    assert ro.completion_mask.tolist() == [[1] * (k + 3), [1] + [0] * (k + 2)]
    assert ro.logprobs[0].tolist() == [-0.5, -0.25] + [0.0] * k + [-1.0]
    assert ro.finished.tolist() == [True, False]
    first, second = ro.episodes
    assert first.turns == [("model", "<tool>calculator 2+3</tool>"), ("tool", "<result>5</result>")]
    assert first.calls == {"calculator": 2} and first.errors == {}  # both runs count
    assert second.calls == {"unknown": 1} and second.errors == {"malformed": 1}
