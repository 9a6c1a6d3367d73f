"""Special categories (RGPD art. 9): health and disability are classified by field and by value, leave only under
an explicit consent for ``sante-handicap`` (never a legal basis), leave no trace in a row when withheld, and are
counted as ``sante-handicap`` in the run's statistics and audit decisions (what the DPO report reads)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.formats.csv_output import CsvOutput
from connectors.transports.local import LocalFolderOptions
from consent.decision import ConsentIndex, ConsentVersion, Rule, decide
from schemas.categories import CATEGORIE_DU_BLOC
from schemas.categories import CategorieDonnees as C
from schemas.codes import Frein
from schemas.spie_v1 import PersonneSPIE
from spie_hub.core.home import REGISTRY_PATH
from spie_hub.privacy.keys import PseudonymisationKey
from spie_hub.privacy.pseudonym import Pseudonymiser
from spie_hub.registry import Base, Recipient, load_flows
from spie_hub.run.decide import Decider, present_categories
from spie_hub.run.records import Mapped
from spie_hub.run.summary import RecipientCounts
from spie_hub.store import open_store

TODAY = dt.date(2026, 11, 30)
LEGAL = Base("legale", "CASF art. L262-40 ; RGPD art. 6.1.e", True)


def _record(**blocks: Any) -> PersonneSPIE:
    data = {"pseudonyme": "t1." + "0" * 32, "provenance": {"partenaire": "x", "format": "y", "position": "p1"},
            "droit_rsa": {"etat": "2", "soumis_droits_devoirs": True, "role": "DEM", "organisme": "CAF",
                          "departement": "052"}}
    return PersonneSPIE.model_validate(data | blocks)


HEALTHY = {
    "diagnostic": {"date": "2026-10-01", "freins": [{"frein": "sante", "impact": "3"}, {"frein": "logement", "impact": "1"}]},
    "actions": [{"libelle": "Bilan de santé", "theme": "sante", "statut": "prevue"},
                {"libelle": "Permis B", "theme": "mobilite", "statut": "en-cours"}],
    "sante_handicap": {"rqth": True, "handicap": True},
}


def _recipient(politique: dict[C, Base]) -> Recipient:
    return Recipient("departement-052", "Département", "x", LocalFolderOptions(type="dossier-local", dossier="x"),
                     politique, (C.DROITS_RSA,))


def _output() -> CsvOutput:
    columns = [{"entete": "Pseudonyme", "champ": "pseudonyme"},
               {"entete": "Frein 1", "champ": "diagnostic.freins.0.frein"},
               {"entete": "Frein 2", "champ": "diagnostic.freins.1.frein"},
               {"entete": "Action 1", "champ": "actions.0.theme"},
               {"entete": "Action 2", "champ": "actions.1.theme"},
               {"entete": "RQTH", "champ": "sante_handicap.rqth"},
               {"entete": "Frein de santé", "champ": "sante_handicap.freins.0.frein"}]
    return CsvOutput.from_spec({"sortie": "test", "colonnes": columns})


def _row(record: PersonneSPIE, allowed: frozenset[C]) -> str:
    import io

    stream = io.BytesIO()
    writer = _output().open(stream)
    writer.write(record, "p", allowed)
    writer.close()
    return stream.getvalue().decode("utf-8-sig").splitlines()[1]


def test_a_block_of_the_schema_belongs_to_the_special_category() -> None:
    assert C.SANTE_HANDICAP in set(CATEGORIE_DU_BLOC.values())
    assert CATEGORIE_DU_BLOC["sante_handicap"] is C.SANTE_HANDICAP


def test_health_values_are_moved_out_of_the_ordinary_blocks_by_value() -> None:
    record = _record(**HEALTHY)
    assert [f.frein for f in record.diagnostic.freins] == [Frein.LOGEMENT]
    assert [a.theme for a in record.actions] == [Frein.MOBILITE]
    assert [f.frein for f in record.sante_handicap.freins] == [Frein.SANTE]
    assert [a.libelle for a in record.sante_handicap.actions] == ["Bilan de santé"]
    assert record.sante_handicap.rqth is True
    assert C.SANTE_HANDICAP in present_categories(record)


def test_a_record_whose_only_barrier_is_health_carries_no_ordinary_diagnostic() -> None:
    record = _record(diagnostic={"freins": [{"frein": "sante", "impact": "2"}]})
    assert record.diagnostic is None
    assert present_categories(record) == (C.DROITS_RSA, C.SANTE_HANDICAP)


def test_a_non_health_barrier_cannot_hide_in_the_special_block() -> None:
    with pytest.raises(ValueError, match="freins de santé"):
        _record(sante_handicap={"freins": [{"frein": "logement", "impact": "1"}]})


def test_without_explicit_consent_a_withheld_special_category_leaves_no_trace_in_the_row() -> None:
    record = _record(**HEALTHY)
    recipient = _recipient({C.DROITS_RSA: LEGAL, C.DIAGNOSTIC: LEGAL, C.ORIENTATION_PARCOURS: LEGAL,
                            C.SANTE_HANDICAP: Base("consentement")})
    decision = decide(recipient, present_categories(record), [], TODAY)
    assert decision.livre and not decision.categories[C.SANTE_HANDICAP].permis
    row = _row(record, decision.permises)
    assert "sante" not in row.lower() and "santé" not in row.lower() and "oui" not in row
    # The ordinary barrier and action still go, in the first places; nothing betrays the health ones.
    assert row.split(";") == ["p", "logement", "", "mobilite", "", "", ""]


def test_an_explicit_consent_for_sante_handicap_lets_it_leave() -> None:
    record = _record(**HEALTHY)
    recipient = _recipient({C.DROITS_RSA: LEGAL, C.DIAGNOSTIC: LEGAL, C.SANTE_HANDICAP: Base("consentement")})
    grant = ConsentVersion("c1", 1, "active", "deny",
                           (Rule("permit", frozenset({"departement-052"}), frozenset({"sante-handicap"}), None, None),))
    decision = decide(recipient, present_categories(record), [grant], TODAY)
    assert decision.categories[C.SANTE_HANDICAP].permis
    row = _row(record, decision.permises)
    assert "oui" in row and "sante" in row


def test_the_runs_statistics_and_audit_decisions_count_special_category_exchanges(tmp_path: Path) -> None:
    flow = load_flows(REGISTRY_PATH)["caf-vers-departement"]
    recipient = _recipient({C.DROITS_RSA: LEGAL, C.SANTE_HANDICAP: Base("consentement")})
    engine = open_store(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    pseudonymiser = Pseudonymiser(PseudonymisationKey("t1", b"k" * 32))
    pivot = pseudonymiser.pivot_from_nir("1800175123456")
    record = _record(**HEALTHY).model_copy(update={"pseudonyme": pivot.pseudonyme})
    decider = Decider(flow, [recipient], ConsentIndex(engine), pseudonymiser, TODAY)
    ((_, _, decision, text, _),) = list(decider.decide([Mapped(record, pivot, "p1")]))
    assert json.loads(text)["categories"]["sante-handicap"]["permis"] is False
    counts = {recipient.id: RecipientCounts()}
    decider.fold_into(counts)
    assert counts[recipient.id].fondements["sante-handicap"] == {"sans-consentement": 1}
