"""A test's outside tool: skipped where missing, a failure under ``CI=true``.

``.ci/run`` installs every tool the suite needs, so on CI a missing one is a
missing install step, not a reason to skip.
"""

from __future__ import annotations

import os
import shutil

import pytest

__all__ = ["need_tool"]


def need_tool(*names: str, package: str) -> str:
    """Return the path of the first of ``names`` on ``PATH``.

    Otherwise skip the test with the reason, or, when the environment has
    ``CI=true``, fail it: ``package`` names the Debian package to install.
    """
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    reason = f"{' or '.join(names)} is not installed (Debian package {package!r})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI=true, so a missing tool fails (.ci/run)")
    pytest.skip(reason)
