import torch

from reasonrl.envs import Toolbox, calculator
from reasonrl.envs.tools import ToolCall
from reasonrl.models import load_tokenizer
from reasonrl.rollout.episodes import EpisodeRecords


def test_records_make_a_rollout_with_the_answer_as_untrained_context():
    tok = load_tokenizer("bundled")
    rec = EpisodeRecords(2)
    box = Toolbox([calculator])
    rec.sampled(0, [5, 6], [-0.5, -0.25])
    rec.turns[0].append(("model", "call"))
    observation = rec.call(0, box, ToolCall("calculator", "2+3"))
    assert observation.text == "5"
    assert rec.fits(0, [7, 8], budget=5) and not rec.fits(0, [7, 8, 9], budget=5)
    rec.answered(0, "<result>5</result>", [7, 8])
    rec.sampled(0, [9], [-1.0])
    rec.call(1, box, "the call names no tool")  # a parse error: counted, unknown tool
    rec.sampled(1, [4], [-2.0])
    rec.finished[0] = True
    ro = rec.rollout(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3), tok, 0, "cpu")
    assert ro.completion_ids.tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert ro.model_mask.tolist() == [[1, 1, 0, 0, 1], [1, 0, 0, 0, 0]]
    assert ro.completion_mask.tolist() == [[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ro.logprobs[0].tolist() == [-0.5, -0.25, 0.0, 0.0, -1.0]
    assert ro.finished.tolist() == [True, False]
    first, second = ro.episodes
    assert first.turns == [("model", "call"), ("tool", "<result>5</result>")]
    assert first.calls == {"calculator": 1} and first.errors == {}
    assert second.calls == {"unknown": 1} and second.errors == {"malformed": 1}
