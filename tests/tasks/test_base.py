from reasonrl.tasks import Sample


def test_a_problem_is_grouped_by_its_task_and_its_difficulty_label():
    assert Sample("q", "1", {"task": "chain_sum", "difficulty": "hard"}).group == "chain_sum/hard"
    assert Sample("q", "1", {"difficulty": "easy"}).group == "easy"
    assert Sample("q", "1", {"task": "chain_sum"}).group == "chain_sum"
    # reasoning-gym's own metadata["difficulty"] holds parameter ranges, not a label
    assert Sample("q", "1", {"task": "leg", "difficulty": {"digits": [1, 2]}}).group == "leg"
    assert Sample("q", "1").group == ""
