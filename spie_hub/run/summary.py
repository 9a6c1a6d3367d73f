"""What a run did, per recipient: counts that chunks of one file can be merged into (``RunSummary.merge``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecipientCounts:
    livres: int = 0
    retenus: int = 0
    fichier: str | None = None
    deja_livre: bool = False
    #: withheld records by reason, and for each category the ground of each decision (for the DPO's report)
    motifs: Counter[str] = field(default_factory=Counter)
    fondements: dict[str, Counter[str]] = field(default_factory=dict)

    def merge(self, other: RecipientCounts) -> None:
        self.livres += other.livres
        self.retenus += other.retenus
        self.deja_livre = self.deja_livre and other.deja_livre
        self.fichier = self.fichier or other.fichier
        self.motifs.update(other.motifs)
        for category, grounds in other.fondements.items():
            self.fondements.setdefault(category, Counter()).update(grounds)

    def as_record(self) -> dict[str, Any]:
        return {"livres": self.livres, "retenus": self.retenus, "deja_livre": self.deja_livre,
                "motifs": dict(self.motifs), "fondements": {k: dict(v) for k, v in self.fondements.items()}}


#: The statuses a run ends with. "annule": rolled back after an interruption, nothing delivered; "incomplete": its
#: publication was interrupted and its staging lost, some recipients received their file (the audit says which).
STATUSES = ("termine", "deja-livre", "quarantaine", "annule", "incomplete")


@dataclass
class RunSummary:
    run_id: str
    flux: str
    statut: str  # "en-cours" while it runs, then one of STATUSES
    lus: int = 0
    rejetes: int = 0
    destinataires: dict[str, RecipientCounts] = field(default_factory=dict)
    rapport_rejets: str | None = None
    quarantaine: str | None = None
    message: str | None = None
    anomalies: list[str] = field(default_factory=list)
    #: Opaque reference of the input (never a partner's file name), for XComs and logs.
    reference: str | None = None

    def accounted(self) -> bool:
        """read = delivered + withheld + rejected, for every recipient."""
        return all(c.deja_livre or c.livres + c.retenus + self.rejetes == self.lus for c in self.destinataires.values())

    def merge(self, other: RunSummary) -> RunSummary:
        """Add another part of the same input (a chunk) to this summary; returns self."""
        if other.flux != self.flux:
            raise ValueError("résumés de flux différents")
        self.lus += other.lus
        self.rejetes += other.rejetes
        for rid, counts in other.destinataires.items():
            self.destinataires.setdefault(rid, RecipientCounts(deja_livre=True)).merge(counts)
        self.anomalies.extend(a for a in other.anomalies if a not in self.anomalies)
        return self

    def counts_record(self) -> dict[str, Any]:
        """The summary stored with the run and in its closing audit entry (no file name, no person)."""
        return {rid: c.as_record() for rid, c in self.destinataires.items()}

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from its (key, count) pairs, counting the pairs.
        out = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "destinataires"}
        out["destinataires"] = {rid: c.as_record() | {"fichier": c.fichier} for rid, c in self.destinataires.items()}
        return out

    def for_xcom(self) -> dict[str, Any]:
        return {"fichier": self.reference, "execution": self.run_id, "statut": self.statut, "lus": self.lus,
                "rejetes": self.rejetes, "anomalies": self.anomalies,
                "destinataires": {rid: {"livres": c.livres, "retenus": c.retenus} for rid, c in self.destinataires.items()}}
