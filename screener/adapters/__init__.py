"""Input adapters: outside data formats (registry tables, FHIR) -> canonical patient JSON.

Each adapter only reshapes and parses its input into the format of docs/patient-format.md and
reports what it could not use; normalisation and screening happen downstream.
"""
