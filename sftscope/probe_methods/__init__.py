"""The mastery probe's methods, one module each, registered in
:data:`sftscope.registry.PROBE_METHODS` (``method: NAME`` in a probe config). Each module's
``METHOD`` is a :class:`ProbeMethod`: it turns one chunk of facts into mastery records (and,
for the sampling methods, generation records); :mod:`sftscope.probe` does the rest (items,
chunks, resume, the summary)."""

from sftscope.probe_methods.base import ProbeInputs, ProbeMethod, Record, record

__all__ = ["ProbeInputs", "ProbeMethod", "Record", "record"]
