"""`python app.py [--host H] [--port P] [--share] [--device D] [--detector NAME|PATH ...] [--sam VARIANT|PATH]
[--sam-checkpoint PATH]`: start the Grounded-SAM studio (see `python app.py --help`)."""
import os

# Before gradio is imported: no version check or analytics calls leave the machine unless asked for.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str] | None = None) -> None:
    import logging

    from app import Studio, build_demo, launch, parse_settings, registry_from_settings

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[studio] %(message)s"))
    logging.getLogger("app").addHandler(handler)
    logging.getLogger("app").setLevel(logging.INFO)
    settings = parse_settings(argv)
    registry = registry_from_settings(settings)
    # Load now (ZeroGPU wants models on the device at start); failures are shown in the page instead (and in
    # the log, whole, by the registry).
    registry.load_all()
    if registry.segmenters is not None:
        registry.segmenters.load_all()
    studio = Studio(registry, max_prompt_tokens=settings.max_prompt_tokens, limits=settings.limits)
    launch(build_demo(registry, studio), settings)


if __name__ == "__main__":
    main()
