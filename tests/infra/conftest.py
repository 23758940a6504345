"""The Pulumi program lives outside the packages (`infra/`, the directory Pulumi.yaml's
`main` names and Pulumi puts on the path); its tests put it on the path the same way."""

from __future__ import annotations

import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"
if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))
