"""Data set builders: every builder writes MCItems in the common schema (see mmcal.items)."""
