"""Where the hub keeps its state: everything lives under ``SPIE_HUB_HOME`` (default ``./.spie-hub``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: The checkout (or installed tree) holding flows.yaml and mappings/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = PROJECT_ROOT / "flows.yaml"
#: Mapping and output specs (``SPIE_HUB_MAPPINGS`` points elsewhere, e.g. a partner's own folder). Read at call
#: time by its users, so that a test can point it at a folder of its own.
MAPPINGS_DIR = Path(os.environ.get("SPIE_HUB_MAPPINGS") or PROJECT_ROOT / "mappings")


@dataclass(frozen=True)
class HubHome:
    root: Path

    @classmethod
    def from_env(cls) -> HubHome:
        return cls(Path(os.environ.get("SPIE_HUB_HOME", ".spie-hub")).resolve())

    @property
    def database_url(self) -> str:
        # SQLite is the embedded default; SPIE_HUB_DATABASE_URL selects PostgreSQL (postgresql+psycopg://…).
        return os.environ.get("SPIE_HUB_DATABASE_URL") or f"sqlite:///{self.root / 'hub.sqlite3'}"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def ensure(self) -> HubHome:
        for folder in (self.root, self.keys, self.inbox, self.outbox, self.quarantine, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self.keys.chmod(0o700)
        return self
