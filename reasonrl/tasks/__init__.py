"""Task sources, prompt formats and reasoning traces."""

from reasonrl.tasks.base import Sample
from reasonrl.tasks.prompts import render_prompt
from reasonrl.tasks.sources import load_splits

__all__ = ["Sample", "load_splits", "render_prompt"]
