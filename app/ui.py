"""The page: layout, and which event runs which `Studio` function under which API name.

Named API endpoints (all take the same inputs as the page, in this order, unless noted):
  /status   ()                            -> markdown: empty when the models load, else what to do
  /encode   (image, model, use_sam)       -> status line; runs the image encoders once per image
  /segment  (image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model)
            -> (annotated image, legend HTML, detections table, JSON summary, timing line)
  /refilter (same as /segment)            -> same as /segment; what slider moves call (served from the
            caches, no model runs); does nothing while image or prompt is empty
  /export   (same as /segment)            -> zip: masks/NNN_phrase.png, coco.json, detections.json, annotated.png
  /retry    ()                            -> markdown as /status, after loading the failed models again
            (at most once per 30 s)

Every event that can run a model goes through the pipeline's run lock (one model call at a time per device);
Run, upload and export also queue one at a time in Gradio ("models"), while slider moves run beside them
("refilter", 4 at a time) and return at once when the caches hold their answer.
"""
from __future__ import annotations

import os

import gradio as gr
from starlette.middleware import Middleware

from app.components import ImageUpload, ThresholdSlider
from app.disk import DiskJanitor
from app.edge import RequestBodyLimit, StudioBlocks
from app.examples import example_rows
from app.gpu import on_gpu
from app.models import PipelineRegistry
from app.rendering import TABLE_HEADERS
from app.settings import StudioSettings
from app.studio import Studio
from app.uploads import upload_folder
from grounding.pipeline import SUGGESTED_NMS_IOU

TITLE = "Grounded-SAM studio"
INTRO = (
    "Type what to find, separated by ` . ` (e.g. `cat . remote control`), add an image and press **Run**. "
    "Grounding DINO finds boxes for the phrases, SAM turns them into masks. The sliders re-filter the cached "
    "result at once, without running a model again."
)
CSS = """
.gsam-legend { display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: center; font-size: 0.95em; }
.gsam-chip { display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px 2px 6px;
             border-radius: 999px; border: 1px solid var(--chip); background: color-mix(in srgb, var(--chip) 14%, transparent); }
.gsam-swatch { width: 12px; height: 12px; border-radius: 3px; background: var(--chip); }
#weights-banner h3 { color: #b45309; }
#timings { font-size: 0.9em; opacity: 0.85; }
"""


def on_spaces() -> bool:
    """True inside a Hugging Face Space (which sets SYSTEM=spaces)."""
    return os.environ.get("SYSTEM") == "spaces"


def build_demo(registry: PipelineRegistry, studio: Studio | None = None) -> gr.Blocks:
    """The studio page over `registry` (tests pass registries of tiny models)."""
    studio = studio or Studio(registry)
    # ZeroGPU durations: a new image or prompt runs both encoders (seconds on a GPU; the first call also
    # builds the CUDA op, ~15 s); a slider move at most decodes masks for newly shown boxes.
    segment = on_gpu(studio.segment, duration=60)
    refilter = on_gpu(studio.refilter, duration=20)
    encode = on_gpu(studio.encode, duration=60)
    export = on_gpu(studio.export, duration=60)

    age_s = int(studio.limits.cache_minutes * 60)
    with StudioBlocks(title=TITLE, delete_cache=(max(60, age_s // 2), age_s)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        banner = gr.Markdown(label="Status", elem_id="weights-banner")
        retry = gr.Button("Retry loading the models", size="sm", visible=False, elem_id="retry-loads")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                image = ImageUpload(
                    type="filepath", label="Image", sources=["upload", "webcam", "clipboard"], height=400, elem_id="input-image"
                )
                image.max_data_url_bytes = studio.limits.max_upload_bytes
                image_info = gr.Markdown(label="Image info", elem_id="image-info")
                prompt = gr.Textbox(
                    label="What to find",
                    placeholder="cat . remote control . person",
                    info="Phrases separated by ' . '; long lists are split into 256-token chunks.",
                    elem_id="prompt",
                )
                with gr.Row():
                    run = gr.Button("Run", variant="primary", elem_id="run")
                    export_button = gr.Button("Export masks + COCO", elem_id="export")
                with gr.Accordion("Thresholds and options", open=True):
                    box_threshold = ThresholdSlider(
                        minimum=0, maximum=1, value=0.35, step=0.01, label="Box threshold",
                        info="keep a box when its best phrase score is above this", elem_id="box-threshold",
                    )
                    text_threshold = ThresholdSlider(
                        minimum=0, maximum=1, value=0.25, step=0.01, label="Text threshold",
                        info="words scoring above this form the box's label", elem_id="text-threshold",
                    )
                    nms_iou = ThresholdSlider(
                        minimum=0, maximum=1, value=1.0, step=0.01, label="NMS IoU (1 = off)",
                        info=f"drop overlapping boxes of any phrase above this overlap; try {SUGGESTED_NMS_IOU}",
                        elem_id="nms-iou",
                    )
                    with gr.Row():
                        use_sam = gr.Checkbox(
                            value=registry.sam_enabled, interactive=registry.sam_enabled, label="Masks (SAM)",
                            info=None if registry.sam_enabled else "started with --sam none",
                        )
                        model = gr.Dropdown(
                            choices=registry.names, value=registry.default_name, label="Detector",
                            visible=len(registry.names) > 1,
                        )
            with gr.Column(scale=6, min_width=320):
                annotated = gr.Image(
                    label="Result", type="filepath", format="jpeg", interactive=False, height=400,
                    buttons=["download", "fullscreen"], elem_id="result-image",
                )
                legend = gr.HTML(label="Legend", elem_id="legend")
                timings = gr.Markdown(label="Timings", elem_id="timings")
                download = gr.File(label="Export (zip)", interactive=False, height=90, elem_id="download")
        table = gr.Dataframe(
            headers=TABLE_HEADERS, label="Detections", interactive=False, elem_id="detections",
            datatype=["number", "str", "number", "number", "number", "number", "number", "number"],
        )
        with gr.Accordion("Raw result (JSON)", open=False):
            summary = gr.JSON(label="Summary", elem_id="summary")

        inputs = [image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model]
        outputs = [annotated, legend, table, summary, timings]
        gr.Examples(
            examples=example_rows(),
            inputs=[image, prompt, box_threshold, text_threshold],
            outputs=outputs,
            fn=lambda image, prompt, box, text: segment(image, prompt, box, text, 1.0, registry.sam_enabled, None),
            cache_examples=on_spaces(),
            cache_mode="lazy",
            run_on_click=True,
            label="Examples (drawn scenes; real weights needed for sensible boxes)",
        )

        def banner_update(text: str) -> tuple[str, dict]:
            return text, gr.update(visible=bool(text))

        demo.load(studio.banner, outputs=banner, api_name="status").then(
            banner_update, banner, [banner, retry], api_visibility="private", queue=False
        )
        retry.click(studio.retry_loads, outputs=banner, api_name="retry", concurrency_id="models").then(
            banner_update, banner, [banner, retry], api_visibility="private", queue=False
        )
        image.upload(
            encode, [image, model, use_sam], image_info, api_name="encode", show_progress="minimal",
            concurrency_id="models",
        ).success(
            refilter, inputs, outputs, api_name="refilter_after_upload", api_visibility="private",
            show_progress="minimal", concurrency_id="refilter", concurrency_limit=4,
        )
        gr.on(
            [run.click, prompt.submit], segment, inputs, outputs, api_name="segment", show_progress="minimal",
            concurrency_id="models",
        )
        gr.on(
            [box_threshold.input, text_threshold.input, nms_iou.input, use_sam.input, model.input],
            refilter, inputs, outputs, api_name="refilter", trigger_mode="always_last",
            show_progress="hidden", concurrency_id="refilter", concurrency_limit=4,
        )
        export_button.click(export, inputs, download, api_name="export", concurrency_id="models")
    return demo


def launch(demo: gr.Blocks, settings: StudioSettings, **kwargs) -> tuple:
    """Queue (one model run at a time per device), bound request bodies and disk, and serve `demo` as
    `settings` say."""
    limits = settings.limits
    demo.queue(default_concurrency_limit=1, max_size=64)
    janitor = DiskJanitor(
        upload_folder(), max_bytes=limits.cache_mb << 20, max_age_s=limits.cache_minutes * 60,
        keep=lambda: kept_files(demo),
    ).start()
    # A data: URL image in a JSON body is base64: 4/3 of the upload limit, plus room for the other inputs.
    body_limit = limits.max_upload_bytes * 4 // 3 + (1 << 20)
    try:
        return demo.launch(
            server_name=settings.host,
            server_port=settings.port,
            share=settings.share,
            max_file_size=limits.max_upload_bytes,
            css=CSS,
            footer_links=["api", "gradio"],
            app_kwargs={"middleware": [Middleware(RequestBodyLimit, max_bytes=body_limit)]},
            **kwargs,
        )
    except BaseException:
        janitor.stop()
        raise


def kept_files(demo: gr.Blocks) -> set[str]:
    """Files Gradio must keep in its cache (the page's example images)."""
    return {path for block in list(demo.blocks.values()) for path in getattr(block, "keep_in_cache", ())}
