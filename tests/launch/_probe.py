"""Prints which cluster environment fulmen detects in this process and the ranks it reads (one JSON line)."""

import json
import os
import sys

from fulmen.plugins.environments import detect_cluster_environment

env = detect_cluster_environment()
line = json.dumps(
    {
        "env": type(env).__name__,
        "rank": env.global_rank(),
        "world": env.world_size(),
        "local": env.local_rank(),
        "node": env.node_rank(),
        "resume": os.environ.get("FULMEN_AUTO_RESUME"),
    }
)
with open(sys.argv[1], "a") as f:
    f.write(line + "\n")
