"""Auditing artifacts back to their sources, from the provenance store (mmcal.provenance).

``chain``: the tree from one artifact down to the raw sources; ``verify``: what on disk no longer
matches its record (missing, modified, stale inputs, other code/config/environment) and everything
downstream of it; ``export``: the whole run as a Workflow Run RO-Crate. ``cells`` and ``rescore``
recompute one table cell and re-score records.
"""
