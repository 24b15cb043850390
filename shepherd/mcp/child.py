"""Launcher for stdio MCP servers: `python -m shepherd.mcp.child PARENT_PID COMMAND [ARGS...]`.

It asks the kernel to kill it when its parent (the gateway) dies, then becomes the server (exec keeps
that request). A server therefore never outlives a gateway that was killed without a chance to close
its pipes or reap it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}")
    if os.getppid() != parent:  # the gateway died before the request took hold
        raise SystemExit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
