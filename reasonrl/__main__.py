"""``python -m reasonrl`` is the ``reasonrl`` command."""

from reasonrl.cli import app

app()
