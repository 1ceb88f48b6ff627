"""Data element catalogue: the vocabulary shared by rules, normalizer and adapters.

Pipeline position: *beside* the pipeline. The validator checks rule files against these names,
the normalizer checks patient data against their types, units and plausible ranges, and the
adapters (FHIR, registry tables) map outside codes onto them. Adding a data element means adding
one entry here (and, for a new code system mapping, its codes); no other code changes.

Kinds:
  quantity   a number with a canonical unit, optional unit conversions and a plausible range.
             ``uln=True`` marks lab results whose reference range gives an upper limit of normal,
             so rules may compare ``x_uln``.
  coded      one of a closed set of values (serology results, donor type, ...).
  boolean    true / false (pregnant, childbearing potential, ...).
  condition  a diagnosis or event: present, with onset / abatement dates.
  exposure   a prior therapy; rules use its cumulative days.
  derived    computed from demographics (age).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

Kind = Literal["quantity", "coded", "boolean", "condition", "exposure", "derived"]

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
#: Project CodeSystem for data that has no standard code (documented in docs/data-elements.md).
PROJECT = "urn:screener:data-element"


@dataclass(frozen=True)
class Element:
    name: str
    kind: Kind
    label: str
    unit: str | None = None
    #: unit spelling (normalised: lower case, no spaces) -> factor to the canonical unit
    units: Mapping[str, Fraction] = field(default_factory=dict)
    #: inclusive plausible range in the canonical unit; values outside are data issues
    plausible: tuple[float, float] | None = None
    integer: bool = False
    uln: bool = False
    values: tuple[str, ...] = ()
    loinc: tuple[str, ...] = ()
    snomed: tuple[str, ...] = ()
    #: ICD-10 code prefixes (a code matches when it starts with one of them, dots ignored)
    icd10: tuple[str, ...] = ()
    #: broader codes that include this condition but also others (e.g. "acute lymphoblastic
    #: leukemia" for B-ALL): a record coded so makes the condition possible, not proven, and
    #: criteria on it become unknown. (SNOMED codes, ICD-10 prefixes)
    broader_snomed: tuple[str, ...] = ()
    broader_icd10: tuple[str, ...] = ()
    #: an event at one point in time (a myocardial infarction): a windowed test counts it by
    #: its onset only. Without this, a record that began before the window and is still
    #: active (or has no end) counts as lasting into it, as a thrombosis or a bleed does.
    point_event: bool = False
    #: a coded value that a later result does not clear (a BCR-ABL1 fusion found once is a
    #: property of the leukemia; a later negative is response to treatment or another assay):
    #: the newest result with this value counts, however many newer results say otherwise
    sticky: str | None = None
    #: a reference range is used only in the value's own unit: the element covers analytes
    #: whose mass units convert differently (BUN and urea)
    range_in_value_unit: bool = False
    #: (x ULN elements) the band an upper limit of normal falls in, canonical unit, inclusive:
    #: laboratories' ULNs vary, but one outside this band is a unit mix-up (a creatinine range
    #: of 106 read as mg/dL; 40 ukat/L for ALT), whether it comes with a result or is a site
    #: default in a rule file
    uln_band: tuple[Fraction, Fraction] | None = None


def _f(x: str) -> Fraction:
    return Fraction(x)


_ONE = Fraction(1)
_PERCENT = {"%": _ONE, "percent": _ONE}
_SCORE = {"{score}": _ONE, "score": _ONE, "": _ONE, "1": _ONE}
_ENZYME = {"u/l": _ONE, "iu/l": _ONE, "[iu]/l": _ONE, "units/l": _ONE, "unit/l": _ONE,
           "ukat/l": _f("60"), "µkat/l": _f("60")}
_POSNEG = ("positive", "negative", "indeterminate")
#: other spellings of coded values in patient data (and the did-you-mean of rule values)
VALUE_SYNONYMS = {
    "pos": "positive", "+": "positive", "reactive": "positive", "present": "positive",
    "neg": "negative", "-": "negative", "nonreactive": "negative", "non-reactive": "negative",
    "non_reactive": "negative", "absent": "negative",
    "not detected": "not_detected", "undetected": "not_detected", "notdetected": "not_detected",
    "m": "male", "f": "female",
}

_POSNEG_TO_DETECT = {"positive": "detected", "negative": "not_detected"}
_DETECT_TO_POSNEG = {"detected": "positive", "not_detected": "negative"}


def coded_spelling(el: Element, text: str) -> str:
    """A coded value as written, in the catalogue's spelling when it is one of the usual others
    (case, spaces, `VALUE_SYNONYMS`, positive / negative for detected / not detected and back).
    The result may still not be a value of `el`: the caller decides."""
    s = text.strip().lower()
    s = VALUE_SYNONYMS.get(s, s).replace(" ", "_")
    if "detected" in el.values:
        return _POSNEG_TO_DETECT.get(s, s)
    if "positive" in el.values:
        return _DETECT_TO_POSNEG.get(s, s)
    return s


_DETECT = ("detected", "not_detected")

ELEMENTS: dict[str, Element] = {e.name: e for e in [
    # --- demographics -----------------------------------------------------------------------
    Element("age", "derived", "age in completed years at as_of", unit="years", plausible=(0, 130),
            integer=True),
    Element("sex", "coded", "administrative sex", values=("female", "male", "other", "unknown")),
    # --- performance and comorbidity scores -------------------------------------------------
    Element("ecog", "quantity", "ECOG performance status", unit="{score}", units=_SCORE,
            plausible=(0, 5), integer=True, loinc=("89247-1",)),
    Element("karnofsky", "quantity", "Karnofsky performance status", unit="{score}",
            units=_SCORE, plausible=(0, 100), integer=True, loinc=("89243-0",)),
    Element("hct_ci", "quantity", "HCT-CI comorbidity score", unit="{score}", units=_SCORE,
            plausible=(0, 30), integer=True),
    # --- organ function: labs with reference ranges -----------------------------------------
    Element("alt", "quantity", "alanine aminotransferase (ALT)", unit="U/L", units=_ENZYME,
            plausible=(0, 100000), uln=True, uln_band=(_f("10"), _f("200")), loinc=("1742-6",)),
    Element("ast", "quantity", "aspartate aminotransferase (AST)", unit="U/L", units=_ENZYME,
            plausible=(0, 100000), uln=True, uln_band=(_f("10"), _f("200")), loinc=("1920-8",)),
    Element("bilirubin_total", "quantity", "total bilirubin", unit="mg/dL",
            units={"mg/dl": _ONE, "umol/l": 1 / _f("17.1"), "µmol/l": 1 / _f("17.1"),
                   "mmol/l": 1000 / _f("17.1")},
            plausible=(0, 100), uln=True, uln_band=(_f("0.4"), _f("4")),
            loinc=("1975-2", "14631-6", "42719-5")),
    Element("creatinine", "quantity", "serum creatinine", unit="mg/dL",
            units={"mg/dl": _ONE, "umol/l": 1 / _f("88.4"), "µmol/l": 1 / _f("88.4"),
                   "mmol/l": 1000 / _f("88.4")},
            plausible=(0.1, 50), uln=True, uln_band=(_f("0.4"), _f("4")),
            loinc=("2160-0", "14682-9", "38483-4")),
    # BUN and urea are one element: the protocols say "BUN" and labs report either. A x ULN
    # comparison uses the result's own reference range, so the analyte never matters there, as
    # long as value and range share a unit: 40 mg/dL of urea is 6.7 mmol/L, of BUN 14.3 mmol/L,
    # so a range in another unit than the value cannot be converted (range_in_value_unit).
    # Urea in mass units is "mg/dL{urea}" (the FHIR adapter writes it for LOINC 3091-6):
    # 60 g of urea hold 28 g of nitrogen, so it is converted to BUN; plain mg/dL is BUN.
    Element("bun", "quantity", "urea nitrogen (BUN) or urea", unit="mg/dL",
            units={"mg/dl": _ONE, "mmol/l": 1 / _f("0.357"),
                   "mg/dl{urea}": _f("28.0134") / _f("60.0553")},
            plausible=(0, 500), uln=True, range_in_value_unit=True,
            uln_band=(_f("8"), _f("80")),
            loinc=("3094-0", "14937-7", "6299-2", "22664-7", "3091-6")),
    Element("creatinine_clearance", "quantity", "creatinine clearance or eGFR", unit="mL/min",
            units={"ml/min": _ONE, "ml/min/1.73m2": _ONE, "ml/min/{1.73_m2}": _ONE},
            plausible=(0, 300), loinc=("35591-7", "2164-2", "33914-3", "62238-1")),
    # --- cardiac and pulmonary function -----------------------------------------------------
    # The lower bounds of the % elements refuse a fraction written with "%" (an LVEF of
    # "0.55 %" is 55 %, not 0.55 %: read as given it would fail "LVEF >= 50 %"); no living
    # patient screened for transplant has an LVEF or % predicted value below 5 %.
    Element("lvef", "quantity", "left ventricular ejection fraction", unit="%", units=_PERCENT,
            plausible=(5, 100),
            loinc=("10230-1", "18043-0", "8806-2", "8807-0", "8808-8", "8811-2", "8812-0")),
    Element("fev1_pct_pred", "quantity", "FEV1 % predicted", unit="%", units=_PERCENT,
            plausible=(5, 250), loinc=("20152-5", "20151-7")),
    Element("fvc_pct_pred", "quantity", "FVC % predicted", unit="%", units=_PERCENT,
            plausible=(5, 250), loinc=("19872-1",)),
    Element("dlco_pct_pred", "quantity", "DLCO % predicted", unit="%", units=_PERCENT,
            plausible=(5, 250), loinc=("98130-8",)),
    # --- leukemia ---------------------------------------------------------------------------
    Element("marrow_blasts_pct", "quantity", "bone marrow blasts", unit="%", units=_PERCENT,
            plausible=(0, 100), loinc=("11150-0",)),
    Element("cd19_pct", "quantity", "CD19-positive leukemic cells (flow cytometry)", unit="%",
            units=_PERCENT, plausible=(0, 100)),
    Element("bcr_abl1", "coded", "BCR-ABL1 fusion (molecular)", values=_POSNEG,
            loinc=("21821-4", "49795-8", "42714-6"), sticky="positive"),
    Element("disease_status", "coded", "disease status at screening",
            values=("newly_diagnosed", "relapsed", "refractory", "remission")),
    Element("cns_status", "coded", "CNS involvement (CNS1 = none, CNS2/CNS3 = involved)",
            values=("cns1", "cns2", "cns3")),
    # ICD-10 C91.0 and SNOMED 91857003 are acute lymphoblastic leukemia of either lineage
    # (B or T): they make B-ALL possible, not proven.
    Element("b_all", "condition", "B-cell acute lymphoblastic leukemia",
            snomed=("277571004",), broader_snomed=("91857003",), broader_icd10=("C910",)),
    Element("cns_leukemia", "condition", "central nervous system leukemia"),
    # --- transplant donor -------------------------------------------------------------------
    Element("donor_type", "coded", "best available stem-cell donor",
            values=("matched_sibling", "unrelated", "haploidentical", "cord", "none")),
    Element("donor_hla_match", "quantity", "donor-recipient HLA match (alleles out of 10)",
            unit="/10", units={"/10": _ONE, "": _ONE, "{match}": _ONE},
            plausible=(0, 10), integer=True),
    # --- infection --------------------------------------------------------------------------
    Element("hbsag", "coded", "hepatitis B surface antigen", values=_POSNEG,
            loinc=("5196-1", "5195-3", "7905-3")),
    Element("hbcab", "coded", "hepatitis B core antibody (total)", values=_POSNEG,
            loinc=("16933-4", "13952-7")),
    Element("hbv_dna", "coded", "HBV DNA in peripheral blood", values=_DETECT,
            loinc=("42595-9", "29615-2", "48398-2", "29610-3")),
    Element("hcv_ab", "coded", "hepatitis C antibody", values=_POSNEG,
            loinc=("16128-1", "13955-0")),
    Element("hcv_rna", "coded", "HCV RNA", values=_DETECT,
            loinc=("11011-4", "20416-4", "38180-6", "11259-9")),
    Element("hiv_ab", "coded", "HIV-1/2 antibody", values=_POSNEG,
            loinc=("7918-6", "31201-7", "56888-1")),
    Element("syphilis_nontreponemal", "coded", "syphilis non-treponemal test (RPR / TRUST / VDRL)",
            values=_POSNEG, loinc=("20507-0", "31147-2", "5292-8")),
    # Infections have no code of their own: the infectious-disease chapter and the common
    # infections elsewhere are "possible" (unknown when active: requiring treatment is the
    # clinician's call), so that a coded pneumonia on a reviewed list is not read as "no
    # infection" (found by the second rule review).
    Element("active_infection", "condition", "active bacterial, viral or fungal infection "
            "requiring treatment",
            broader_icd10=("A", "B", "J0", "J10", "J11", "J12", "J13", "J14", "J15", "J16",
                           "J17", "J18", "J20", "J21", "J22", "J36", "J390", "J391", "J85",
                           "J86", "K35", "K570", "K572", "K574", "K578", "K61", "K630",
                           "K65", "K750", "K810", "K830", "L02", "L03", "L08", "M00", "M462",
                           "M463", "M86", "N10", "N151", "N300", "N390", "N410", "N70",
                           "N71", "N73", "G00", "G01", "G02", "G042", "G05", "G06", "G07",
                           "H600", "H66", "H700", "I301", "I33", "I400", "R652", "T802",
                           "T814", "T826", "T827", "T835", "T836", "T845", "T846",
                           "T847", "T857", "O85", "O86")),
    Element("hiv_infection", "condition", "HIV infection", snomed=("86406008",),
            icd10=("B20", "Z21")),
    # --- reproduction -----------------------------------------------------------------------
    Element("pregnant", "boolean", "currently pregnant", loinc=("82810-3",)),
    Element("lactating", "boolean", "currently breastfeeding"),
    Element("childbearing_potential", "boolean", "of childbearing potential (or partner of)"),
    # --- cardiovascular and other comorbidities ---------------------------------------------
    Element("myocardial_infarction", "condition", "myocardial infarction",
            snomed=("22298006",), icd10=("I21", "I22"), point_event=True),
    Element("heart_failure", "condition", "congestive / chronic heart failure",
            snomed=("84114007", "42343007", "88805009"),
            # I11.0, I13.0, I13.2: hypertensive heart (and kidney) disease with heart failure
            icd10=("I50", "I110", "I130", "I132")),
    # I20.0; ICD-10-CM combination codes "... coronary artery disease with unstable angina"
    # (I25.110, I25.7x0)
    Element("unstable_angina", "condition", "unstable angina", snomed=("4557003",),
            icd10=("I200", "I25110", "I25700", "I25710", "I25720", "I25730", "I25750",
                   "I25760", "I25790")),
    # Other arrhythmias and conduction disorders (I44-I49: heart block, atrial fibrillation,
    # cardiac arrest, ...) may be "clinically significant": possible, not proven (unknown)
    Element("severe_arrhythmia", "condition", "clinically significant arrhythmia (e.g. VF, VT)",
            snomed=("71908006", "25569003"), icd10=("I470", "I472", "I490"),
            broader_icd10=("I44", "I45", "I46", "I47", "I48", "I49")),
    Element("uncontrolled_hypertension", "condition",
            "uncontrolled hypertension, hypertensive crisis or encephalopathy",
            icd10=("I16", "I674")),
    # I74 arterial embolism and thrombosis (limbs, abdominal aorta, ...), I75 atheroembolism;
    # occlusion or stenosis of cerebral / precerebral arteries (I65, I66) may be thrombotic
    # H34.1 / H34.2: retinal artery occlusion; K55.0 (acute vascular disorders of the
    # intestine) and N28.0 (renal infarction) may be arterial thrombosis or not: possible.
    Element("arterial_thrombosis", "condition", "arterial thrombosis (stroke, TIA)",
            snomed=("230690007", "422504002", "266257000"),
            icd10=("I63", "I61", "I64", "G45", "I74", "I75", "H341", "H342"),
            broader_icd10=("I65", "I66", "K550", "N280")),
    # Deep veins of the legs (I82.4, I82.5; I80.1-I80.2 thrombophlebitis), of the arms and
    # trunk (I82.62, I82.72 deep upper limb; I82.A axillary, I82.B subclavian, I82.C internal
    # jugular; I82.2 vena cava), and in pregnancy (O22.3, O87.1). Unspecified or other veins
    # (I80.3, I80.8-9, I82.60, I82.70, I82.8-9, I82.3 renal, I81 portal) and a history code
    # (Z86.71) make a DVT possible, not proven. Superficial veins (I80.0, I82.61, I82.71) are
    # another disease.
    Element("dvt", "condition", "deep vein thrombosis", snomed=("128053003",),
            icd10=("I824", "I825", "I801", "I802", "I8262", "I8272", "I82A", "I82B", "I82C",
                   "I822", "O223", "O871"),
            broader_icd10=("I803", "I808", "I809", "I8260", "I8270", "I828", "I829", "I823",
                           "I81", "Z8671")),
    Element("pulmonary_embolism", "condition", "pulmonary embolism", snomed=("59282003",),
            icd10=("I26",), broader_icd10=("O882",)),
    # "Symptomatic" DVT/PE is not coded with the diagnosis; this records the clinician's word.
    # Sticky: with two events in a window, a "false" recorded for the later one must not hide
    # a symptomatic earlier one (each flag is dated with its event; a corrected flag is marked
    # entered-in-error, which is never used).
    Element("vte_symptomatic", "boolean", "the recorded DVT / PE was symptomatic",
            sticky="true"),
    # The procedures are recorded as "status" codes on problem lists: coronary bypass (Z95.1),
    # coronary stent / angioplasty (Z95.5, Z98.61), an implanted defibrillator (Z95.810).
    # Other cardiac implants (pacemaker, valves, other devices) are possible only.
    Element("high_risk_cv_procedure", "condition",
            "coronary angioplasty, defibrillation or other high-risk cardiovascular procedure",
            icd10=("Z951", "Z955", "Z9861", "Z95810"),
            broader_icd10=("Z950", "Z952", "Z953", "Z954", "Z95811", "Z95812",
                           "Z95818", "Z959")),
    Element("respiratory_insufficiency", "condition", "severe respiratory insufficiency",
            icd10=("J96",)),
    # ICD-10 names the bleeding: haematemesis, melaena, unspecified haemorrhage (K92.0-2);
    # ulcers with haemorrhage (K25-K28 .0 .2 .4 .6, K22.11 oesophageal); gastritis with bleeding
    # (K29.x1); diverticular disease with bleeding (K57.x1, K57.x3); angiodysplasia with bleeding
    # (K31.811, K55.21); anal / rectal haemorrhage (K62.5); bleeding varices (I85.01, I85.11).
    # The same codes without bleeding are another disease.
    Element("gi_bleeding", "condition", "active gastrointestinal bleeding",
            icd10=("K920", "K921", "K922", "K2211",
                   *(f"K{u}{s}" for u in (25, 26, 27, 28) for s in (0, 2, 4, 6)),
                   *(f"K29{s}1" for s in (0, 2, 3, 4, 5, 6, 7, 8, 9)),
                   *(f"K57{s}" for s in ("01", "11", "13", "21", "31", "33", "41", "51", "53",
                                         "81", "91", "93")),
                   "K31811", "K5521", "K625", "I8501", "I8511")),
    # Hepatic failure (K72), alcoholic hepatic failure (K70.4), hepatorenal syndrome (K76.7),
    # hepatic encephalopathy (K76.82), alcoholic cirrhosis with ascites (K70.31). Cirrhosis
    # without a sign of decompensation (K70.3, K74.6), portal hypertension (K76.6) and ascites
    # (R18) make it possible, not proven.
    Element("decompensated_liver", "condition", "decompensated liver dysfunction",
            icd10=("K72", "K704", "K767", "K7682", "K7031"),
            broader_icd10=("K703", "K746", "K766", "R18")),
    # Acute kidney failure (N17), CKD stage 4-5 and end stage (N18.4-N18.6), dependence on
    # dialysis (Z99.2); CKD of unspecified or moderate stage (N18.3, N18.9) and unspecified
    # kidney failure (N19) make it possible, not proven.
    Element("renal_dysfunction", "condition", "severe renal dysfunction",
            icd10=("N17", "N184", "N185", "N186", "Z992"),
            broader_icd10=("N183", "N189", "N19")),
    # No code says "severe": intestinal obstruction and ileus (K56), perforation (K63.1),
    # toxic megacolon (K59.31), acute pancreatitis (K85), intestinal failure and short bowel
    # (K91.2), GI graft-versus-host disease (K93.8 is not specific: D89.81 with a GI code)
    # are possible only: unknown while active, so that a reviewed list with a coded
    # obstruction is not read as "no GI dysfunction" (second rule review, by analogy with
    # infections). K55.0 (acute intestinal ischaemia or infarction) is possible here and as an
    # arterial thrombosis: a broader code makes every element it may be possible.
    Element("gi_dysfunction", "condition", "severe gastrointestinal dysfunction",
            broader_icd10=("K56", "K631", "K5931", "K85", "K912", "K550", "K559", "D8981")),
    Element("epilepsy", "condition", "epilepsy", snomed=("84757009",), icd10=("G40", "G41")),
    Element("antiepileptic_therapy", "boolean", "currently on antiepileptic therapy"),
    Element("blinatumomab_hypersensitivity", "condition",
            "hypersensitivity to blinatumomab or its components"),
    # --- prior therapy ----------------------------------------------------------------------
    Element("blinatumomab", "exposure", "blinatumomab administration", unit="d",
            plausible=(0, 3650), integer=True),
]}

#: Fields of a patient record that are demographics, not element observations.
DEMOGRAPHIC = frozenset({"age", "sex"})


def by_loinc() -> dict[str, str]:
    """LOINC code -> element name (each code belongs to one element)."""
    out: dict[str, str] = {}
    for e in ELEMENTS.values():
        for code in e.loinc:
            out[code] = e.name
    return out


def _matches(system: str, code: str, snomed: tuple[str, ...], icd10: tuple[str, ...]) -> bool:
    if system == SNOMED:
        return code in snomed
    if system in (ICD10, ICD10CM):
        norm = code.replace(".", "").strip().upper()
        return any(norm.startswith(p) for p in icd10)
    return False


def condition_for(system: str, code: str) -> str | None:
    """Map a SNOMED CT, ICD-10(-CM) or project code to the condition element it proves."""
    for e in ELEMENTS.values():
        if e.kind != "condition":
            continue
        if system == PROJECT and code == e.name:
            return e.name
        if _matches(system, code, e.snomed, e.icd10):
            return e.name
    return None


def condition_broader(system: str, code: str) -> tuple[str, ...]:
    """Every condition element a broader code makes possible but does not prove (K55.0,
    acute vascular disorders of the intestine: an arterial thrombosis, or a severe GI
    dysfunction); empty if none."""
    return tuple(e.name for e in ELEMENTS.values() if e.kind == "condition" and
                 _matches(system, code, e.broader_snomed, e.broader_icd10))


def normalise_unit(unit: str | None) -> str:
    return (unit or "").replace(" ", "").replace("μ", "µ").lower()
