"""Model and tokenizer loading, the bundled checkpoint, tokenizer training."""

from reasonrl.models.loading import (
    bundled_model_dir,
    init_model,
    load_model,
    load_tokenizer,
    pick_device,
    resolve_model_path,
)

__all__ = [
    "bundled_model_dir",
    "init_model",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "resolve_model_path",
]
