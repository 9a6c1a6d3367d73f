"""libxml2's English validation and parse messages, translated to French for the sender of a refused file.

A partner's notice of rejection must be readable by the people who fix the file: each problem names its line and
its element, and says what is wrong in French. The common cases are translated (missing child, unexpected element,
value outside an enumeration or a pattern, not a date / an integer / a time…, length facets, text or attributes
where none is allowed, malformed XML); any other message is kept as libxml2 wrote it behind a French prefix.

No value of the file is ever repeated: a value quoted by libxml2 may be a birth date or a NIR, and these messages
reach logs, the audit and notices. Element names, type names, lengths and the allowed lists of the schema stay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

#: What each XSD built-in type expects, in French (the type names of the WebRSA XSDs and a few more).
_TYPES: dict[str, str] = {
    "xs:date": "une date AAAA-MM-JJ existante",
    "xs:dateTime": "une date-heure AAAA-MM-JJTHH:MM:SS",
    "xs:time": "une heure HH:MM:SS",
    "xs:gYear": "une année AAAA",
    "xs:gYearMonth": "un mois AAAA-MM",
    "xs:integer": "un nombre entier",
    "xs:int": "un nombre entier",
    "xs:long": "un nombre entier",
    "xs:positiveInteger": "un nombre entier strictement positif",
    "xs:nonNegativeInteger": "un nombre entier positif ou nul",
    "xs:decimal": "un nombre décimal (point comme séparateur)",
    "xs:boolean": "un booléen (0, 1, true ou false)",
    "xs:string": "un texte",
    # Simple types named by the WebRSA XSDs themselves.
    "boolean": "0 ou 1",
    "datetime": "une date-heure AAAA-MM-JJ HH:MM:SS",
}

#: Patterns of the WebRSA XSDs, said in words.
_PATTERNS: dict[str, str] = {
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}\s[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,3})?": "date-heure AAAA-MM-JJ HH:MM:SS",
}

_ELEMENT = re.compile(r"^Element '([^']+)'(?:, attribute '([^']+)')?: (.*)$", re.DOTALL)
_EXPECTED = re.compile(r"Expected is (?:one of )?\( ?(.*?) ?\)\.?")


def _expected(text: str) -> str:
    found = _EXPECTED.search(text)
    if not found:
        return ""
    names = [n.strip() for n in found.group(1).split(",") if n.strip()]
    # libxml2 prefixes names with a namespace in braces ({uri}name) when there is one: keep the local name.
    names = [n.rsplit("}", 1)[-1] for n in names]
    if len(names) == 1:
        return f" ; attendu : <{names[0]}>"
    return " ; attendu l'un de : " + ", ".join(f"<{n}>" for n in names)


def _type_label(name: str) -> str:
    return _TYPES.get(name, f"une valeur du type {name}")


#: (pattern on the text after "Element 'x': ", French rendering). The first that matches wins.
_SCHEMA_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], str], str]]] = [
    (re.compile(r"^Missing child element\(s\)\."),
     lambda m, t: "élément(s) enfant(s) obligatoire(s) manquant(s)" + _expected(t)),
    (re.compile(r"^This element is not expected\."),
     lambda m, t: "élément inattendu à cet endroit (inconnu du schéma, en double ou mal placé)" + _expected(t)),
    (re.compile(r"^No matching global declaration available for the validation root\."),
     lambda m, t: "élément racine inconnu du schéma"),
    (re.compile(r"^\[facet 'enumeration'\] The value '[^']*' is not an element of the set \{(.*)\}\.$", re.DOTALL),
     lambda m, t: "valeur hors de la liste autorisée (" + ", ".join(v.strip().strip("'") for v in m.group(1).split(",")) + ")"),
    (re.compile(r"^\[facet 'pattern'\] The value '[^']*' is not accepted by the pattern '(.*)'\.$", re.DOTALL),
     lambda m, t: f"valeur non conforme au format attendu ({_PATTERNS.get(m.group(1), 'motif ' + m.group(1))})"),
    (re.compile(r"^\[facet 'length'\] The value(?: '[^']*')? has a length of '(\d+)'; this differs from the allowed "
                r"length of '(\d+)'\.$", re.DOTALL),
     lambda m, t: f"longueur {m.group(1)} au lieu de {m.group(2)} caractères"),
    (re.compile(r"^\[facet 'maxLength'\] The value(?: '[^']*')? has a length of '(\d+)'; this exceeds the allowed "
                r"maximum length of '(\d+)'\.$", re.DOTALL),
     lambda m, t: f"valeur trop longue ({m.group(1)} caractères, {m.group(2)} au plus)"),
    (re.compile(r"^\[facet 'minLength'\] The value(?: '[^']*')? has a length of '(\d+)'; this underruns the allowed "
                r"minimum length of '(\d+)'\.$", re.DOTALL),
     lambda m, t: f"valeur trop courte ({m.group(1)} caractères, {m.group(2)} au moins)"),
    (re.compile(r"^\[facet '(min|max)(Inclusive|Exclusive)'\] The value '[^']*' is (?:less|greater) than (?:or equal "
                r"to )?the (?:minimum|maximum) value allowed \('([^']*)'\)\.$", re.DOTALL),
     lambda m, t: ("valeur inférieure au minimum" if m.group(1) == "min" else "valeur supérieure au maximum")
     + f" autorisé ({m.group(3)})"),
    (re.compile(r"^'[^']*' is not a valid value of the atomic type '([^']+)'\.$", re.DOTALL),
     lambda m, t: f"valeur invalide (attendu : {_type_label(m.group(1))})"),
    (re.compile(r"^'[^']*' is not a valid value of the local atomic type\.$", re.DOTALL),
     lambda m, t: "valeur invalide pour le type de cet élément"),
    (re.compile(r"^Character content other than whitespace is not allowed because the content type is "
                r"'element-only'\.$"),
     lambda m, t: "texte interdit ici : cet élément ne contient que des éléments"),
    (re.compile(r"^Element content is not allowed, because the content type is a simple type"),
     lambda m, t: "élément interdit ici : cet élément ne contient qu'une valeur"),
    (re.compile(r"^The attribute '([^']+)' is not allowed\.$"),
     lambda m, t: f"attribut « {m.group(1)} » non autorisé"),
    (re.compile(r"^The attribute '([^']+)' is required but missing\.$"),
     lambda m, t: f"attribut obligatoire « {m.group(1)} » manquant"),
]

#: Well-formedness errors of the parser (lxml's message without its ", line N, column M" tail).
_SYNTAX_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], tuple[str | None, str]]]] = [
    (re.compile(r"^Opening and ending tag mismatch: (\S+) line (\d+) and (\S+)$"),
     lambda m: (m.group(1), f"balise <{m.group(1)}> (ouverte ligne {m.group(2)}) fermée par </{m.group(3)}>")),
    (re.compile(r"^Premature end of data in tag (\S+) line (\d+)$"),
     lambda m: (m.group(1), f"fichier tronqué : la balise <{m.group(1)}> ouverte ligne {m.group(2)} n'est jamais "
                            "fermée")),
    (re.compile(r"^Document is empty$"), lambda m: (None, "document vide")),
    (re.compile(r"^Extra content at the end of the document$"),
     lambda m: (None, "contenu en trop après la fin de l'élément racine")),
    (re.compile(r"^Entity '([^']+)' not defined$"), lambda m: (None, "entité non définie (caractère & non échappé ?)")),
    (re.compile(r"^EntityRef: expecting ';'$"), lambda m: (None, "caractère & non échappé (écrire &amp;)")),
    (re.compile(r"^StartTag: invalid element name$"), lambda m: (None, "nom d'élément invalide après <")),
    (re.compile(r"^Couldn't find end of Start Tag (\S+)"), lambda m: (m.group(1), f"balise <{m.group(1)}> mal fermée")),
    (re.compile(r"^Attribute (\S+) redefined$"), lambda m: (None, f"attribut « {m.group(1)} » en double")),
    (re.compile(r"^(?:Invalid bytes in character encoding|Input is not proper UTF-8.*)$", re.DOTALL),
     lambda m: (None, "octets invalides pour l'encodage déclaré (UTF-8 attendu)")),
    (re.compile(r"^Char 0x[0-9A-Fa-f]+ out of allowed range$"), lambda m: (None, "caractère interdit en XML")),
]


@dataclass(frozen=True)
class XmlProblem:
    """One problem of a file, ready for a notice: its line, its element, what is wrong (in French)."""

    line: int | None
    element: str | None
    message: str

    def __str__(self) -> str:
        place = ", ".join(filter(None, [f"ligne {self.line}" if self.line else None,
                                        f"élément <{self.element}>" if self.element else None]))
        return f"{place} : {self.message}" if place else self.message


_QUOTED = re.compile(r"'[^']*'")


def mask_values(message: str) -> str:
    """Replace every quoted text of an untranslated message but element, attribute and type names."""

    def replace(match: re.Match[str]) -> str:
        before = message[max(0, match.start() - 12):match.start()]
        inner = match.group(0)[1:-1]
        if before.endswith(("Element ", "attribute ", "facet ", "type ")) or re.fullmatch(r"xs:\w+|\d{1,3}", inner):
            return match.group(0)
        return "'[valeur masquée]'"

    masked = _QUOTED.sub(replace, message)
    return re.sub(r"Bytes: (0x[0-9A-Fa-f]{2} ?)+", "Bytes: [masqués]", masked)


def translate_schema_message(message: str) -> tuple[str | None, str]:
    """(element, French text) for one libxml2 schema-validation message."""
    text = message.strip()
    element, attribute, rest = None, None, text
    if found := _ELEMENT.match(text):
        element, attribute, rest = found.group(1), found.group(2), found.group(3).strip()
    for pattern, render in _SCHEMA_RULES:
        if matched := pattern.match(rest):
            return element, render(matched, rest)
    del attribute  # named in the untranslated text below, masked like the rest
    return element, f"erreur de validation (message non traduit) : {mask_values(rest)}"


_TAIL = re.compile(r", line (\d+), column (\d+)$")


def translate_syntax_message(message: str, line: int | None = None) -> XmlProblem:
    """A well-formedness error (``XMLSyntaxError.msg``) as an ``XmlProblem``."""
    text = message.strip()
    if tail := _TAIL.search(text):
        line = line or int(tail.group(1))
        text = text[:tail.start()]
    for pattern, render in _SYNTAX_RULES:
        if matched := pattern.match(text):
            element, french = render(matched)
            return XmlProblem(line, element, f"XML mal formé : {french}")
    return XmlProblem(line, None, f"XML mal formé (message non traduit) : {mask_values(text)}")


def schema_problem(message: str, line: int | None) -> XmlProblem:
    element, french = translate_schema_message(message)
    return XmlProblem(line or None, element, french)


def summary(schema_name: str, problems: list[XmlProblem], more: bool) -> str:
    """The whole file's refusal, in French: the first problems one per line, with line numbers."""
    count = len(problems)
    head = (f"Fichier non conforme au schéma {schema_name} : {count} erreur{'s' if count > 1 else ''}"
            f"{' (les premières seulement ; corriger puis déposer à nouveau)' if more else ''}")
    return head + "".join(f"\n- {p}" for p in problems)
