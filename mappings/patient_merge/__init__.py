"""FHIR R5 Patient $merge semantics on R4 resources: the two Patients, re-pointed
references, the Provenance that records them, and the exact undo. Pure: no I/O."""
