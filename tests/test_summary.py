"""RunSummary.merge: the parts (chunks) of one input add up to the summary of the whole."""

from __future__ import annotations

from collections import Counter

from spie_hub.run.summary import RecipientCounts, RunSummary


def _part(lus: int, rejetes: int, livres: int, retenus: int, motif: str) -> RunSummary:
    part = RunSummary("r", "flux", "termine", lus=lus, rejetes=rejetes, anomalies=[f"anomalie {motif}"])
    part.destinataires["dep"] = RecipientCounts(livres, retenus, motifs=Counter({motif: retenus}),
                                                fondements={"identite": Counter({"consentement": livres})})
    return part


def test_merging_two_chunks_adds_every_count_and_keeps_each_anomaly_once() -> None:
    whole = _part(10, 1, 6, 3, "sans-consentement").merge(_part(5, 0, 2, 3, "refus"))
    whole.merge(_part(0, 0, 0, 0, "refus"))
    counts = whole.destinataires["dep"]
    assert (whole.lus, whole.rejetes, counts.livres, counts.retenus) == (15, 1, 8, 6)
    assert counts.motifs == Counter({"sans-consentement": 3, "refus": 3})
    assert counts.fondements == {"identite": Counter({"consentement": 8})}
    assert whole.anomalies == ["anomalie sans-consentement", "anomalie refus"]
    assert whole.accounted()


def test_a_summary_serialises_its_counters_as_plain_counts() -> None:
    record = _part(4, 0, 1, 3, "refus").to_dict()
    assert record["destinataires"]["dep"]["motifs"] == {"refus": 3}
    assert record["destinataires"]["dep"]["fondements"] == {"identite": {"consentement": 1}}
