"""arena-distill: pairwise human-preference models (A / B / tie), trained and distilled.

The package is organised one module per pipeline stage (``arena_distill.stages``) on top of
shared pieces: ``data`` (readers, normalisation, de-duplication, folds), ``text`` (prompt
building, truncation, tokenisation), ``tokens`` (the token cache), ``models`` (tiny-model
factory), ``demo`` (the embedded demo data set) and ``io`` (manifests, atomic writes).
docs/ARCHITECTURE.md is the map.
"""

__version__ = "0.1.0"
