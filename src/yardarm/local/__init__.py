"""Local runtime: runs the stack as supervised processes on this machine."""
