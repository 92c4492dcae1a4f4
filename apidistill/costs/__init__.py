"""costs stage."""
