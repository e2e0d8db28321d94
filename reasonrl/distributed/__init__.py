"""Several training processes: where each one sits (``Ranks``)."""

from reasonrl.distributed.ranks import Ranks

__all__ = ["Ranks"]
