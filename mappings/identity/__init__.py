"""Patient identity: versioned Fellegi-Sunter weights and the pure match score over them."""
