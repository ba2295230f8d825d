"""The report: tables and figures from a finished run folder (``sftscope report``)."""
