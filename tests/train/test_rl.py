"""The RL loop's records: what a step writes to samples.jsonl."""

import torch

from reasonrl.config import load_config
from reasonrl.models import load_model, load_tokenizer
from reasonrl.models.loading import bundled_model_dir
from reasonrl.rollout import HFEngine
from reasonrl.tasks import Sample, render_prompt
from reasonrl.train.rl import collect, sample_records


def test_sample_records_hold_the_prompt_the_model_saw_and_the_gold_answer_apart():
    cfg = load_config(
        "quickstart",
        [
            "rl.prompts_per_step=2",
            "rl.completions_per_prompt=2",
            "rl.micro_batch_completions=4",
            "rollout.max_new_tokens=3",  # too few to finish: every completion is cut
            "model.device=cpu",
        ],
    )
    tokenizer = load_tokenizer(str(bundled_model_dir()))
    model = load_model(cfg.model, torch.device("cpu"))
    # prompts of different lengths, so the shorter one is left-padded in the batch
    samples = [Sample("1 + 2 =", "3"), Sample("10 + 20 - 5 + 7 =", "32")]
    prompts = [render_prompt(s, tokenizer, cfg.task.prompt, "auto") for s in samples]
    torch.manual_seed(0)
    engine = HFEngine(model, tokenizer)
    batch = collect(cfg, engine, prompts, samples, 0)

    records = sample_records(batch, cfg, tokenizer)

    assert len(records) == 2
    for i, record in enumerate(records):
        row = 2 * i  # one record per group of completions_per_prompt
        sample = batch.samples[row]
        rendered = prompts[samples.index(sample)]
        assert rendered.startswith("<|im_start|>user\n")  # the chat template was applied
        assert record["prompt"] == rendered != sample.prompt
        assert record["gold_answer"] == sample.answer
        assert record["completion"] == batch.rollout.texts[row]
        assert set(record["rewards"]) == {"answer", "format"}
        assert record["rewards"]["answer"] == batch.components["answer"][row]
        assert record["reward"] == batch.rewards.flatten()[row].item()
        prompt_tokens = len(tokenizer(rendered, add_special_tokens=False).input_ids)
        assert record["tokens"] == {"prompt": prompt_tokens, "completion": 3}
        assert record["truncated"] is True
        assert "answer" not in record  # the answer reward's score no longer reads as the answer
