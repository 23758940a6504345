"""A StatefulSet gives every datastore pod the same settings: the replica's id comes from
its pod index, and the shared peer list may name the replica itself."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from yardarm_datastore.settings import DatastoreSettings

PEERS = {
    str(n): {"raft": f"ds-{n - 1}.peers:8140", "http": f"http://ds-{n - 1}.peers:8090"}
    for n in (1, 2, 3)
}


def test_the_pod_index_names_the_replica_and_its_own_peer_entry_is_left_out() -> None:
    for index in range(3):
        settings = DatastoreSettings(port=8090, pod_index=index, peers=PEERS)
        assert settings.replica_id == index + 1
        assert sorted(settings.peers) == sorted({1, 2, 3} - {index + 1})


def test_a_replica_id_disagreeing_with_the_pod_index_is_refused() -> None:
    with pytest.raises(ValidationError, match="disagrees with pod_index"):
        DatastoreSettings(port=8090, pod_index=1, replica_id=1)
    assert DatastoreSettings(port=8090, pod_index=1, replica_id=2).replica_id == 2


def test_the_environment_sets_the_pod_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YARDARM_DATASTORE_POD_INDEX", "2")
    assert DatastoreSettings(port=8090).replica_id == 3
