"""The cases ``bertsmith bench`` runs, named where the CLI can read them without torch."""

CASES = ("fixed", "variable", "long", "mlm")
