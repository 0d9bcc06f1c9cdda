"""Data layer: readers, normalisation, validation, de-duplication, folds."""
