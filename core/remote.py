"""Where a page server is and how to reach it, as the CLI options give it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import LazarusError
from pageserver.client import PageClient, PageServerError, parse_hostport


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    token: str | None = None
    tls_ca: str | None = None
    # Names every connection of one command to the server: a live fork tells
    # the restores that received all their pages apart by it.
    restore_id: str = field(default_factory=lambda: uuid.uuid4().hex, compare=False)

    @classmethod
    def from_options(cls, hostport: str, token_file: str | None,
                     tls_ca: str | None) -> ServerAddress:
        try:
            host, port = parse_hostport(hostport)
        except ValueError as exc:
            raise LazarusError(f"--page-server {exc}") from None
        token = None
        if token_file is not None:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise LazarusError(f"cannot read token file {token_file}: {exc.strerror}") \
                    from None
        return cls(host, port, token, tls_ca)

    async def connect(self, timeout: float = 10.0) -> PageClient:
        try:
            return await PageClient.connect(self.host, self.port, token=self.token,
                                            tls_ca=self.tls_ca, timeout=timeout,
                                            restore=self.restore_id)
        except PageServerError as exc:
            raise LazarusError(str(exc)) from None
