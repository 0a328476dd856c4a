"""Model building: the SmolLM2 checkpoint, the tiny-LLaVA vision tower and stages."""
