"""ADT (A03/A13/A08) -> FHIR: versioned mapping data and pure builders."""
