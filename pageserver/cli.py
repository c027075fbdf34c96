"""`pageserver` command: the lazy-restore page server (not implemented yet)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("pageserver: error: the page server is not implemented yet (lazy restore is the "
          "next milestone)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
