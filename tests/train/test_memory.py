import torch

from reasonrl.train.memory import MiB, module_mib, peak_memory_mib


def test_module_mib_counts_each_storage_once_and_can_keep_to_trainable_weights():
    emb = torch.nn.Embedding(1024, 256)  # 1 MiB of float32
    head = torch.nn.Linear(256, 1024, bias=False)
    head.weight = emb.weight  # tied: one storage
    model = torch.nn.Sequential(emb, head, torch.nn.LayerNorm(256))
    model.register_buffer("steps", torch.zeros(MiB // 4))  # 1 MiB buffer
    norm = 2 * 256 * 4 / MiB
    assert module_mib(model) == 1 + 1 + norm
    emb.requires_grad_(False)
    assert module_mib(model, trainable_only=True) == norm


def test_cpu_peak_is_the_process_high_water_mark():
    before = peak_memory_mib(torch.device("cpu"))
    block = torch.ones(64 * MiB // 4)  # 64 MiB, touched
    assert peak_memory_mib(torch.device("cpu")) >= before
    assert peak_memory_mib(torch.device("cpu")) > block.numel() * 4 / MiB
