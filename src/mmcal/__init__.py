"""mmcal: calibration of multimodal LLMs, as a reproducible study and a toolkit."""

__version__ = "0.1.0"
LETTERS = "ABCDEFGHIJ"
