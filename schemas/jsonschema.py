"""Generate the JSON Schema of the shared SPIE schema: ``python -m schemas.jsonschema``."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.spie_v1 import SCHEMA_VERSION, PersonneSPIE

JSON_SCHEMA_PATH = Path(__file__).with_name("spie-v1.schema.json")


def render() -> str:
    schema = PersonneSPIE.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://spie-hub.example.fr/schemas/spie-{SCHEMA_VERSION}.schema.json"
    schema["version"] = SCHEMA_VERSION
    return json.dumps(schema, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def main() -> None:
    JSON_SCHEMA_PATH.write_text(render(), encoding="utf-8")
    print(f"Schéma JSON écrit : {JSON_SCHEMA_PATH}")


if __name__ == "__main__":
    main()
