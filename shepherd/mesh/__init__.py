"""Shared state across the processes of one gateway and the instances of a fleet (Redis, or a
local file channel for the processes of one `--workers N` gateway without Redis)."""
