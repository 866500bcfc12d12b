"""Per-subject HTML reports and citation boilerplate."""
