"""Raft consensus as a pure state machine: no sockets, clocks or disks inside."""
