"""QA data: typed records, dataset layouts, aliases and answer matching."""
