"""Regenerate the catalogue blocks of docs/data-elements.md from screener/elements.py.

    .venv/bin/python docs/gen_data_elements.py

Only the text between the ``<!-- BEGIN generated: ... -->`` / ``<!-- END ... -->`` markers is
rewritten, so the table cannot drift from the catalogue while the prose stays hand-written.
Deterministic: the output depends on the catalogue and the page only (no dates, no ordering by
hash).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from any directory

from screener.elements import ELEMENTS, Element  # noqa: E402

OUT = ROOT / "docs" / "data-elements.md"


def _icd(prefix: str) -> str:
    return (prefix[:3] + "." + prefix[3:] if len(prefix) > 3 else prefix) + "*"


def _codes(e: Element) -> str:
    parts = []
    if e.loinc:
        parts.append("LOINC " + ", ".join(e.loinc))
    if e.snomed:
        parts.append("SNOMED " + ", ".join(e.snomed))
    if e.icd10:
        parts.append("ICD-10 " + ", ".join(_icd(p) for p in e.icd10))
    broader = [f"SNOMED {c}" for c in e.broader_snomed] + \
        [f"ICD-10 {_icd(p)}" for p in e.broader_icd10]
    if broader:
        parts.append("possible only (unknown): " + ", ".join(broader))
    if e.point_event:
        parts.append("a point event: windows count its onset only")
    if e.sticky:
        parts.append(f"`{e.sticky}` is not cleared by later results")
    return "; ".join(parts) or "-"


def _units(e: Element) -> str:
    if not e.units:
        return "-"
    return ", ".join(f"`{u}`" if u else "(none)" for u in e.units)


def _fhir(e: Element) -> str:
    if e.name == "age":
        return "Patient.birthDate"
    if e.name == "sex":
        return "Patient.gender"
    if e.kind == "exposure":
        return ("MedicationStatement / MedicationAdministration, RxNorm 1603296 or "
                "\"blinatumomab\" in the medication text")
    if e.kind == "condition":
        where = "Condition.code" + (" (SNOMED / ICD-10)" if e.snomed or e.icd10 else "")
        where += ", or project code"
        if e.name == "blinatumomab_hypersensitivity":
            where = "AllergyIntolerance naming blinatumomab; or Condition, project code"
        return where
    value = {"quantity": "valueQuantity", "boolean": "valueBoolean / valueCodeableConcept",
             "coded": "valueCodeableConcept / valueString"}[e.kind]
    if e.name == "ecog":
        value = "valueCodeableConcept (LA9622-7..LA9627-6) / valueInteger / valueQuantity"
    elif e.name == "pregnant":
        value = "valueCodeableConcept (SNOMED 77386006 / 60001007)"
    elif e.values == ("detected", "not_detected"):
        value += " / valueQuantity"
    elif e.kind == "quantity" and e.integer:
        value += " / valueInteger"
    code = "Observation.code LOINC" if e.loinc else "Observation.code project"
    return f"{code}; {value}"


def _canonical(e: Element) -> str:
    if e.name == "age":
        return "top level `birth_date` (or `age`)"
    if e.name == "sex":
        return "top level `sex`"
    return {"condition": "`conditions[]`", "exposure": "`exposures[]`"}.get(
        e.kind, "`observations[]`")


def _kind(e: Element) -> str:
    if e.kind == "coded":
        return "coded: " + " / ".join(f"`{v}`" for v in e.values)
    if e.kind == "quantity":
        extras = [x for x in ("integer" if e.integer else "", "x ULN" if e.uln else "") if x]
        rng = f" {e.plausible[0]:g}-{e.plausible[1]:g}" if e.plausible else ""
        return "quantity" + rng + (f" ({', '.join(extras)})" if extras else "")
    return e.kind


def catalogue() -> str:
    rows = ["| element | label | kind | unit | accepted units | codes | FHIR | canonical JSON |",
            "|---|---|---|---|---|---|---|---|"]
    for e in ELEMENTS.values():
        rows.append("| " + " | ".join([
            f"`{e.name}`", e.label.replace("|", "/"), _kind(e),
            f"`{e.unit}`" if e.unit else "-", _units(e), _codes(e), _fhir(e), _canonical(e),
        ]) + " |")
    return "\n".join(rows)


def uncoded_conditions() -> str:
    return "\n".join(f"- `{e.name}`: {e.label}" for e in ELEMENTS.values()
                     if e.kind == "condition" and not e.snomed and not e.icd10)


def render(page: str) -> str:
    """The page with every generated block replaced; the hand-written prose is kept."""
    for name, body in (("catalogue", catalogue()), ("uncoded-conditions", uncoded_conditions())):
        begin, end = f"<!-- BEGIN generated: {name} -->", f"<!-- END generated: {name} -->"
        head, found, rest = page.partition(begin)
        _old, found_end, tail = rest.partition(end)
        if not found or not found_end:
            raise SystemExit(f"{OUT}: markers for {name!r} are missing")
        page = f"{head}{begin}\n{body}\n{end}{tail}"
    return page


if __name__ == "__main__":
    OUT.write_text(render(OUT.read_text(encoding="utf-8")), encoding="utf-8")
