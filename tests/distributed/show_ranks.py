"""Writes, as JSON in ``OUT_DIR/rank{N}.json``, the ``Ranks`` that ``init_distributed`` reads from
a launcher's environment and the world the process group sees (an all-gather of ranks). A file per
rank, because the launcher's processes share one stdout and their lines can interleave."""

import json
import sys
from pathlib import Path

from reasonrl.distributed import all_gather_objects, init_distributed, shutdown

ranks = init_distributed("cpu")
(Path(sys.argv[1]) / f"rank{ranks.rank}.json").write_text(
    json.dumps(
        {
            "ranks": [ranks.rank, ranks.world_size, ranks.local_rank],
            "seen": [r.rank for r in all_gather_objects(ranks, ranks)],
        }
    )
)
shutdown()
