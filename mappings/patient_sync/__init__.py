"""ADT^A28/A31 (PID) -> FHIR Patient: versioned mapping data, and the pure map and merge."""
