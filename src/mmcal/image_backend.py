"""The image-processor backend, chosen per model (``models.<name>.image_processor_backend``, the
describer's ``image_processor_backend``): ``pil`` (default) or ``torchvision``.

transformers picks torchvision whenever it imports and falls back to PIL with a warning otherwise, so pixel
values would depend on what else is installed. Every loader here asks for a backend explicitly, refuses
one that cannot work, and checks what it got.
"""

from __future__ import annotations

from mmcal.errors import ConfigError

IMAGE_PROCESSOR_BACKENDS = ("pil", "torchvision")


def check_backend(name: str, backend: str) -> None:
    """``models.<name>.image_processor_backend`` must name a backend that works here: transformers would
    otherwise fall back to the other one with a warning, and pixel values would depend on what is installed."""
    if backend not in IMAGE_PROCESSOR_BACKENDS:
        raise ConfigError(
            f"models.{name}.image_processor_backend: {backend!r} is not one of {', '.join(IMAGE_PROCESSOR_BACKENDS)}"
        )
    if backend == "torchvision":
        try:
            import torchvision  # noqa: F401
        except Exception as exc:  # installed beside a torch it does not match: fails on import
            raise ConfigError(
                f"models.{name}.image_processor_backend: torchvision requested but it cannot be imported here "
                f"({type(exc).__name__}: {exc}); install the 'families' extra with a torchvision matching torch, "
                "or set image_processor_backend: pil"
            ) from None


def loaded_backend(processor) -> str | None:
    """The backend of a processor's image processor (None when it has none)."""
    image_processor = getattr(processor, "image_processor", None)
    return getattr(image_processor, "backend", None) if image_processor is not None else None
