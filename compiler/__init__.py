"""Generic compiler machinery: graph facade, canonicalization, reverse emitter, export. Knows no LRP maths."""
