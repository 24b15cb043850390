"""The harness tests and benchmarks share: real simulator and gateway processes on loopback.

Importable as `shepherd.testing` (it needs the `test` extra's httpx). Nothing under shepherd/ outside
this package imports it.
"""

from shepherd.testing.processes import Gateway, GrpcSim, Process, Sim, free_ports, wait_until

__all__ = ["Gateway", "GrpcSim", "Process", "Sim", "free_ports", "wait_until"]
