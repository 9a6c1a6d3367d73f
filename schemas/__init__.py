"""The shared SPIE data schema (versioned; see CHANGELOG.md and spie-v1.schema.json)."""

from schemas.categories import CATEGORIE_DU_BLOC, CategorieDonnees
from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE

__all__ = ["CATEGORIE_DU_BLOC", "CategorieDonnees", "PersonneSPIE", "SCHEMA_VERSION"]
