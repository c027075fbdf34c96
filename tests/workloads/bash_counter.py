"""Become a bash loop that appends 0, 1, 2, ... to a file using builtins only.

``python bash_counter.py OUT`` execs bash in place (same PID), so the process
the tests dump is bash itself. There is no builtin sleep: fd 3 is a pipe whose
ends the shell itself holds (``exec 3<> <(:)``), and ``read -t 0.05 -u 3``
times out on it for the delay. The process substitution child exits at once.
"""

from __future__ import annotations

import os
import shutil
import sys

SCRIPT = r"""
exec 3<> <(:)
i=0
while :; do
  echo $i >> "$1"
  i=$((i + 1))
  read -t 0.05 -u 3
done
"""


def main() -> None:
    bash = shutil.which("bash") or "/bin/bash"
    os.execv(bash, ["bash", "-c", SCRIPT, "bash_counter", sys.argv[1]])


if __name__ == "__main__":
    main()
