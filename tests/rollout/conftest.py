"""The rollout tests' real datastore (one replica), the gateway tests' fixture."""

from tests.gateway.conftest import datastore_url

__all__ = ["datastore_url"]
