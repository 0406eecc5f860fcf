"""A Python driver script run in its own process, importing this checkout.

The multi-process tests (``test_fork_locks``, ``test_stopped_peers``) run
their scenario as ``python -c CODE ARGS_JSON`` so that a hang or a stop
happens to a process the test can kill, not to pytest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["REPO", "spawn_driver"]

#: The checkout's root: the driver imports ``cachefs`` from here.
REPO = Path(__file__).resolve().parents[1]


def spawn_driver(
    code: str, args: dict[str, Any], *, new_session: bool = False
) -> subprocess.Popen[str]:
    """Start ``code`` with ``args`` (as JSON in ``sys.argv[1]``).

    Its stdout and stderr are text pipes; ``new_session`` puts it in a new
    session, so the test can kill it and every child it forked at once.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH")) if p
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=new_session,
    )
