"""Parameter-level analysis: streaming tensor I/O, update statistics, restoration."""
