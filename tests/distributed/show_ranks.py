"""Prints, as JSON, the ``Ranks`` that ``init_distributed`` reads from a launcher's environment
and the world the process group sees (an all-gather of ranks)."""

import json

from reasonrl.distributed import all_gather_objects, init_distributed, shutdown

ranks = init_distributed("cpu")
print(
    json.dumps(
        {
            "ranks": [ranks.rank, ranks.world_size, ranks.local_rank],
            "seen": [r.rank for r in all_gather_objects(ranks, ranks)],
        }
    )
)
shutdown()
