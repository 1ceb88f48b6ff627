"""Request and response models of the HTTP service, with the examples shown in the OpenAPI docs.

Position: `api/` edge. Requests are validated with these models. Responses are *documented*
with them but serialised straight from the core's report (`screener.report.dumps`, byte-identical
to the CLI's JSON): validating a 40-criterion report through pydantic on every call would cost
time and could turn a harmless new report field into a 500.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

_ISO_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")  # ASCII digits: \d takes any script
#: A screening date outside this range is a mistake, and near year 1 or 9999 the core's date
#: windows (as_of minus N days) would overflow.
AS_OF_MIN, AS_OF_MAX = date(1900, 1, 1), date(2199, 12, 31)


def _iso_date(v: Any) -> Any:
    # Only "YYYY-MM-DD": pydantic would also take a Unix timestamp or a date-time, and a replay
    # must get back exactly the date that was screened.
    if isinstance(v, date):
        return v
    if not isinstance(v, str) or not _ISO_DATE.match(v):
        raise ValueError("as_of must be a date string YYYY-MM-DD")
    d = date.fromisoformat(v)
    if not AS_OF_MIN <= d <= AS_OF_MAX:
        raise ValueError(f"as_of must be between {AS_OF_MIN} and {AS_OF_MAX}")
    return d


IsoDate = Annotated[date, BeforeValidator(_iso_date)]
AttestationValue = Literal["met", "not_met", True]


class _NotAnAttestation:
    """Stands in for a value that must fail `AttestationValue` whatever pydantic's lax mode
    says; its error is the Literal's own (type, location and message unchanged)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _strict_attestations(v: Any) -> Any:
    # pydantic's Literal[True] is lax: it takes 1 and 1.0 as True. An attestation is a
    # deliberate statement, so only the JSON literal true (or "met" / "not_met") counts.
    if isinstance(v, dict):
        return {k: x if x is True or isinstance(x, str) else _NotAnAttestation(x)
                for k, x in v.items()}
    return v
Attestations = Annotated[dict[str, AttestationValue] | list[str],
                         BeforeValidator(_strict_attestations)]

EXAMPLE_PATIENT: dict[str, Any] = {
    "id": "pt-001",
    "birth_date": "1985-03-14",
    "sex": "female",
    "observations": [
        {"element": "alt", "value": 52, "unit": "U/L",
         "reference_range": {"low": 0, "high": 40, "unit": "U/L"},
         "date": "2026-11-01", "status": "final", "source": "Observation/abc"},
        {"element": "ecog", "value": 1, "date": "2026-11-10"},
        {"element": "hbsag", "value": "negative", "date": "2026-10-20"},
    ],
    "conditions": [
        {"element": "b_all", "onset": "2026-10-01", "clinical_status": "active",
         "verification_status": "confirmed", "source": "Condition/1"},
    ],
}

EXAMPLE_BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"fullUrl": "urn:uuid:p1",
         "resource": {"resourceType": "Patient", "id": "p1", "gender": "female",
                      "birthDate": "1985-03-14"}},
        {"resource": {
            "resourceType": "Observation", "id": "alt1", "status": "final",
            "subject": {"reference": "urn:uuid:p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "1742-6"}]},
            "effectiveDateTime": "2026-11-01T08:30:00Z",
            "valueQuantity": {"value": 52, "unit": "U/L", "system": "http://unitsofmeasure.org",
                              "code": "U/L"},
            "referenceRange": [{"high": {"value": 40, "unit": "U/L"}}]}},
    ],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ScreenBase(_Strict):
    patient: dict[str, Any] | None = Field(
        None, description="Canonical patient JSON (docs/patient-format.md). Give this or `fhir`.")
    fhir: dict[str, Any] | list[Any] | None = Field(
        None, description="A FHIR R4 Bundle (collection, searchset, transaction, batch, or "
        "nested), a single resource, or a list of resources. Give this or `patient`.")
    as_of: IsoDate = Field(
        description="Screening date YYYY-MM-DD. Required: the same input, as_of and ruleset "
        "always give the same report, so a decision can be replayed. Data dated after it is "
        "ignored.")

    @model_validator(mode="after")
    def _one_input(self) -> _ScreenBase:
        if (self.patient is None) == (self.fhir is None):
            raise ValueError("give exactly one of `patient` (canonical JSON) or `fhir`")
        if self.patient is not None and "resourceType" in self.patient:
            raise ValueError("`patient` looks like a FHIR resource (it has resourceType); "
                             "send FHIR as `fhir`")
        return self


class ScreenRequest(_ScreenBase):
    """One patient against one trial."""

    attestations: Attestations | None = Field(
        None, description="Manual criteria attested by the investigator: "
        "{criterion_id: met | not_met | true} (true = in the patient's favour), or a list of "
        "criterion ids (each attested in the patient's favour).")


class ScreenAllRequest(_ScreenBase):
    """One patient against every loaded trial."""

    attestations: dict[str, Attestations] | None = Field(
        None, description="Per trial id, the attestations for that trial's manual criteria.")


SCREEN_EXAMPLES: dict[str, Any] = {
    "canonical": {
        "summary": "Canonical patient JSON",
        "value": {"patient": EXAMPLE_PATIENT, "as_of": "2026-11-22",
                  "attestations": {"inc_diagnostic_workup": "met"}},
    },
    "fhir": {
        "summary": "FHIR R4 Bundle",
        "value": {"fhir": EXAMPLE_BUNDLE, "as_of": "2026-11-22"},
    },
}

SCREEN_ALL_EXAMPLES: dict[str, Any] = {
    "canonical": {
        "summary": "Canonical patient JSON against every trial",
        "value": {"patient": EXAMPLE_PATIENT, "as_of": "2026-11-22",
                  "attestations": {"NCT06930105": ["inc_diagnostic_workup"]}},
    },
}


# ---- responses (documentation; see the module docstring) ------------------------------------

class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TrialRef(_Open):
    id: str
    title: str
    version: str
    ruleset_hash: str = Field(description="sha256 of the compiled ruleset")


class CriterionVerdict(_Open):
    id: str
    kind: Literal["inclusion", "exclusion"]
    text: str
    manual: bool
    verdict: Literal["met", "not_met", "unknown", "not_applicable"]
    favourable: bool
    evidence: list[dict[str, Any]]
    missing: list[dict[str, Any]] | None = None
    attested: str | None = None
    policy: dict[str, Any] | None = None


class Report(_Open):
    """The per-criterion report, exactly as `screener screen --format json` prints it, plus the
    FHIR adapter's issues when the input was FHIR."""

    as_of: str
    input_hash: str = Field(description="sha256 of the canonical patient JSON that was screened")
    engine: str
    patient_id: str | None
    trial: TrialRef
    status: Literal["eligible", "needs_review", "ineligible"]
    counts: dict[str, int]
    unresolved: int
    criteria: list[CriterionVerdict]
    missing_data: list[str]
    pending_attestations: list[str]
    data_issues: list[dict[str, Any]]
    data_issues_total: int
    adapter_issues: list[dict[str, Any]] | None = Field(
        None, description="FHIR resources that were skipped or not needed, and why")


class ScreenAllResponse(_Open):
    as_of: str
    input_hash: str
    reports: list[Report] = Field(description="ranked: eligible, then needs_review by fewest "
                                  "unresolved criteria, then ineligible")
    adapter_issues: list[dict[str, Any]] | None = None


class CriterionInfo(_Open):
    id: str
    kind: Literal["inclusion", "exclusion"]
    text: str
    manual: bool
    elements: list[str] = Field(description="data elements the criterion reads")
    note: str | None = None


class TrialSummary(_Open):
    id: str
    title: str
    version: str
    ruleset_hash: str
    inclusion: int
    exclusion: int
    manual: int


class TrialDetail(TrialSummary):
    source: str
    criteria: list[CriterionInfo]


class TrialList(_Open):
    engine: str
    trials: list[TrialSummary]


class ErrorRecord(BaseModel):
    type: str
    loc: list[str | int]
    msg: str


class ErrorBody(_Open):
    detail: list[ErrorRecord]


class ReloadResult(_Open):
    reloaded: bool
    trials: dict[str, str] = Field(description="trial id -> ruleset hash now serving")
    previous: dict[str, str]
    workers: str


# ---- CDS Hooks 2.0 --------------------------------------------------------------------------

class CdsContext(_Open):
    patientId: str
    userId: str | None = None
    encounterId: str | None = None


class CdsRequest(_Open):
    """A CDS Hooks 2.0 service request (`patient-view`)."""

    hook: str
    hookInstance: str
    context: CdsContext
    prefetch: dict[str, Any] | None = None
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None


class CdsLink(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"] = "absolute"


class CdsSource(_Open):
    label: str


class CdsCard(_Open):
    uuid: str
    summary: str = Field(max_length=140)
    indicator: Literal["info", "warning", "critical"]
    detail: str
    source: CdsSource
    links: list[CdsLink] | None = None


class CdsResponse(_Open):
    cards: list[CdsCard]


class CdsService(_Open):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]


class CdsDiscovery(BaseModel):
    services: list[CdsService]


CDS_EXAMPLE: dict[str, Any] = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/example", "patientId": "p1"},
    "prefetch": {
        "patient": {"resourceType": "Patient", "id": "p1", "gender": "female",
                    "birthDate": "1985-03-14"},
        "observations": {"resourceType": "Bundle", "type": "searchset",
                         "entry": [EXAMPLE_BUNDLE["entry"][1]]},
        "conditions": {"resourceType": "Bundle", "type": "searchset", "entry": []},
    },
}
