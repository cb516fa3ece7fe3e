"""`python app.py [--host H] [--port P] [--share] [--device D] [--detector NAME|PATH ...] [--sam VARIANT|PATH]
[--sam-checkpoint PATH]`: start the Grounded-SAM studio (see `python app.py --help`)."""
import os

# Before gradio is imported: no version check or analytics calls leave the machine unless asked for.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main(argv: list[str] | None = None) -> None:
    from app import Studio, build_demo, launch, parse_settings, registry_from_settings

    settings = parse_settings(argv)
    registry = registry_from_settings(settings)
    # Load now (ZeroGPU wants models on the device at start); failures are shown in the page instead.
    for name, problem in registry.load_all().items():
        print(f"[studio] {name}: {problem}", flush=True)
    launch(build_demo(registry, Studio(registry, max_prompt_tokens=settings.max_prompt_tokens)), settings)


if __name__ == "__main__":
    main()
