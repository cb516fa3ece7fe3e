"""The page: layout, and which event runs which `Studio` function under which API name.

Named API endpoints (all take the same inputs as the page, in this order, unless noted):
  /status   ()                            -> markdown: empty when the models load, else what the page runs on
            and how to load the real models
  /retry    ()                            -> as /status, after loading the failed models again (at most once
            per 30 s)
  /encode   (image, model, use_sam, segmenter) -> status line; runs the image encoders once per image
  /segment  (image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter)
            -> (annotated image, status HTML, detections table, JSON summary, details markdown)
  /refilter (same as /segment)            -> same as /segment; what slider releases call (served from the
            caches, no model runs); does nothing while image or prompt is empty
  /export   (same as /segment)            -> zip in the uploaded image's frame: masks/NNN_phrase.png, coco.json,
            detections.json, meta.json (with the session's edits and their history), annotated.png
  /refine   (the /segment inputs, object, points) -> as /segment; object = the table's #, points = [[x, y, 1|0],
            ...] in the result's pixels (1 = part of it, 0 = not), replacing that object's clicks
  /edit     (the /segment inputs, operation, object, label, box) -> as /segment; operation = drop | restore |
            relabel | add_box | next_mask | undo_point | reset | clear
  /video    (video, prompt, box_threshold, text_threshold, keyframe_interval, use_sam, model, segmenter)
            -> (annotated MP4, status HTML, [tracks.json, tracks_mot.txt], JSON summary); the Video tab

Edits live in the session's state (one `gr.State` per browser tab or `gradio_client.Client`), never shared; every
result event applies them. The page's own curation events (clicks on the picture and the table, the panel's
buttons) are private and run one at a time ("edits"), so two quick clicks of one session never race.

Every event that can run a model goes through the pipeline's run lock (one model call at a time per device);
Run, upload and export also queue one at a time in Gradio ("models"), while slider moves run beside them
("refilter", 4 at a time) and return at once when the caches hold their answer. During a drag only the picture
and the status line follow the slider (latest wins); the table, JSON and details follow on release (a key
press on a slider counts as a release).
"""
from __future__ import annotations

import functools
import os

import gradio as gr
from starlette.middleware import Middleware

from app.components import ImageUpload, PromptBox, RawNumber, RawText, ThresholdSlider
from app.curation import Curation
from app.disk import DiskJanitor
from app.edge import RequestBodyLimit, StudioBlocks
from app.examples import demo_example_rows, photo_example_rows
from app.gpu import on_gpu
from app.models import ModelRegistry
from app.rendering import TABLE_HEADERS
from app.settings import StudioSettings
from app.studio import CLICK_MODES, CLICK_SELECT, CURATION_HELP, Studio
from app.uploads import upload_folder
from app.video import VIDEO_HELP, VideoTab, VideoUpload
from grounding.pipeline import SUGGESTED_NMS_IOU
from grounding.text import normalize_caption, split_phrases

EDIT_STATE_SECONDS = 2 * 3600  # a session's edits are kept this long after its last change

TITLE = "Grounded-SAM studio"
INTRO = "Type what to find (`cat . remote control`), add an image, press **Run**: boxes from Grounding DINO, masks from SAM."
CSS = """
.gradio-container { --block-info-text-color: #4b5563; --input-placeholder-color: #6b7280; }
.dark .gradio-container, .gradio-container.dark { --block-info-text-color: #d1d5db; --input-placeholder-color: #9ca3af; }
#weights-banner { padding: 6px 12px; border-radius: 8px; background: color-mix(in srgb, #f59e0b 12%, transparent); }
#weights-banner p { margin: 0; }
#weights-banner details { margin-top: 4px; }
#weights-banner pre, #weights-banner code { white-space: pre-wrap; overflow-wrap: anywhere; }
#status .gsam-legend { display: flex; flex-wrap: wrap; gap: 6px 10px; align-items: center; }
.gsam-count { margin-right: 4px; }
.gsam-chip { display: inline-flex; align-items: center; gap: 6px; padding: 2px 10px 2px 6px; border-radius: 999px;
             border: 1px solid var(--chip); background: color-mix(in srgb, var(--chip) 14%, transparent); }
.gsam-swatch { width: 12px; height: 12px; border-radius: 3px; background: var(--chip); }
.gsam-hints { margin: 6px 0 0 0; padding-left: 18px; font-size: 0.92em; }
.gsam-selected { margin-top: 6px; font-weight: 600; }
#result-image img { cursor: crosshair; }
#result-col.gsam-stale #result-image, #result-col.gsam-stale #status { opacity: 0.35; transition: opacity 0.2s; }
#download-file { display: none; }
"""
# A key step on a slider fires "input" but no "release": send Gradio's own release path (pointerup) on key-up,
# so the table and JSON follow keyboard moves too. The result picture's alt text is the status line's
# `data-alt` ("3 objects: red circle ×1, ..."), copied over whenever either changes.
JS = """
() => {
  document.addEventListener("keyup", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement && target.type === "range" && target.closest(".gsam-slider")) {
      target.dispatchEvent(new PointerEvent("pointerup", { bubbles: true }));
    }
  });
  const describe = () => {
    const img = document.querySelector("#result-image img");
    const legend = document.querySelector("#status [data-alt]");
    const alt = legend ? "Result: " + legend.dataset.alt : "";
    if (img && img.alt !== alt) img.alt = alt;
  };
  new MutationObserver(describe).observe(document.body, { subtree: true, childList: true, attributes: true,
                                                          attributeFilter: ["src", "data-alt"] });
}
"""
MARK_STALE = "() => { document.querySelector('#result-col')?.classList.add('gsam-stale'); }"
MARK_FRESH = "() => { document.querySelector('#result-col')?.classList.remove('gsam-stale'); }"
CLICK_DOWNLOAD = "() => { document.querySelector('#download-file a, #download-file button')?.click(); }"


def on_spaces() -> bool:
    """True inside a Hugging Face Space (which sets SYSTEM=spaces)."""
    return os.environ.get("SYSTEM") == "spaces"


def build_demo(registry: ModelRegistry, studio: Studio | None = None) -> gr.Blocks:
    """The studio page over `registry` (tests pass registries of tiny models)."""
    studio = studio or Studio(registry)
    # ZeroGPU durations: a new image or prompt runs both encoders (seconds on a GPU; the first call also
    # builds the CUDA op, ~15 s); a slider move at most decodes masks for newly shown boxes.
    segment = on_gpu(studio.segment, duration=60)
    show = on_gpu(studio.show, duration=60)
    refilter = on_gpu(studio.refilter, duration=20)
    preview = on_gpu(studio.preview, duration=20)
    encode = on_gpu(studio.encode, duration=60)
    export = on_gpu(studio.export, duration=60)
    click = on_gpu(studio.click, duration=20)
    select_row = on_gpu(studio.select_row, duration=20)
    refine = on_gpu(studio.refine, duration=20)
    edit = on_gpu(studio.edit, duration=20)
    video_tab = VideoTab(studio)
    demo_first = studio.demo_mode()  # shapes examples lead when the page runs on the demo models
    age_s = int(studio.limits.cache_minutes * 60)

    with StudioBlocks(title=TITLE, delete_cache=(max(60, age_s // 2), age_s)) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        banner = gr.Markdown(studio.banner(), elem_id="weights-banner", visible=bool(studio.banner()))
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Image", id="image-tab", elem_id="image-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=320):
                        image = ImageUpload(
                            type="filepath", label="Image", sources=["upload", "webcam", "clipboard"], height=300,
                            elem_id="input-image",
                        )
                        image.max_data_url_bytes = studio.limits.max_upload_bytes
                        with gr.Row(equal_height=True):
                            prompt = PromptBox(
                                label="What to find", placeholder="cat . remote control . person", scale=4,
                                info="Phrases separated by ' . '", elem_id="prompt", max_lines=3,
                            )
                            run = gr.Button("Run", variant="primary", scale=1, min_width=90, elem_id="run")
                        example_slots = gr.Column(elem_id="examples")
                        with gr.Accordion("Thresholds and options", open=True):
                            box_threshold = ThresholdSlider(
                                minimum=0, maximum=1, value=0.35, step=0.01, label="Box threshold", elem_classes="gsam-slider",
                                info="keep a box when its best phrase score is above this", elem_id="box-threshold",
                            )
                            text_threshold = ThresholdSlider(
                                minimum=0, maximum=1, value=0.25, step=0.01, label="Text threshold", elem_classes="gsam-slider",
                                info="words scoring above this form the box's label", elem_id="text-threshold",
                            )
                            nms_iou = ThresholdSlider(
                                minimum=0, maximum=1, value=1.0, step=0.01, label="NMS IoU (1 = off)", elem_classes="gsam-slider",
                                info=f"drop overlapping boxes of any phrase above this overlap; try {SUGGESTED_NMS_IOU}",
                                elem_id="nms-iou",
                            )
                            with gr.Row():
                                use_sam = gr.Checkbox(
                                    value=registry.sam_enabled, interactive=registry.sam_enabled, label="Masks (SAM)",
                                    info=None if registry.sam_enabled else "started with --sam none",
                                )
                                model = gr.Dropdown(
                                    choices=studio.model_choices(), value=registry.default_name, label="Detector",
                                    visible=len(registry.names) > 1, elem_id="model",
                                )
                                segmenters = registry.segmenters
                                segmenter = gr.Dropdown(
                                    choices=studio.segmenter_choices(), label="Segmenter", elem_id="segmenter",
                                    value=segmenters.default_name if segmenters else None,
                                    visible=segmenters is not None and len(segmenters.names) > 1,
                                    info="the shapes demo model keeps its own",
                                )
                        retry = gr.Button("Retry loading the models", size="sm", visible=bool(registry.failures()),
                                          elem_id="retry-loads")
                        image_info = gr.Markdown(elem_id="image-info")
                    with gr.Column(scale=6, min_width=320, elem_id="result-col"):
                        annotated = gr.Image(
                            label="Result", type="filepath", format="jpeg", interactive=False, height=440,
                            buttons=["download", "fullscreen"], elem_id="result-image",
                        )
                        status = gr.HTML(elem_id="status")
                        download_button = gr.Button("Download masks + COCO (zip)", elem_id="export")
                        download = gr.DownloadButton(visible="hidden", elem_id="download-file")
                        table = gr.Dataframe(
                            headers=TABLE_HEADERS, label="Detections (click a row to select it)", interactive=False,
                            elem_id="detections", column_widths=["6%", "21%", "9%", "8%", "8%", "8%", "8%", "10%", "22%"], wrap=True,
                            datatype=["number", "str", "number", "number", "number", "number", "number", "number"],
                        )
                        with gr.Accordion("Fix objects: select, re-cut a mask with clicks, drop, relabel, add a box",
                                          open=True, elem_id="curate"):
                            gr.Markdown(CURATION_HELP)
                            click_mode = gr.Radio(list(CLICK_MODES), value=CLICK_SELECT, label="A click on the picture will",
                                                  elem_id="click-mode")
                            with gr.Row():
                                undo_button = gr.Button("Undo click", size="sm", min_width=80, elem_id="undo-click")
                                reset_button = gr.Button("Reset mask", size="sm", min_width=80, elem_id="reset-mask")
                                next_button = gr.Button("Next mask (SAM's 3)", size="sm", min_width=80, elem_id="next-mask")
                                drop_button = gr.Button("Drop / restore", size="sm", min_width=80, elem_id="drop")
                                clear_button = gr.Button("Clear all edits", size="sm", min_width=80, elem_id="clear-edits")
                            with gr.Row(equal_height=True):
                                label = gr.Dropdown(choices=[], value=None, allow_custom_value=True, scale=4, elem_id="label",
                                                    label="Label (for Relabel, and for an added box): a prompt phrase or any text")
                                relabel_button = gr.Button("Relabel", size="sm", scale=1, min_width=80, elem_id="relabel")
                        with gr.Accordion("Details: timings, cache, raw JSON", open=False, elem_id="details-box"):
                            details = gr.Markdown(elem_id="details")
                            summary = gr.JSON(label="Raw result (JSON)", elem_id="summary")
            with gr.Tab("Video", id="video-tab", elem_id="video-tab"):
                gr.Markdown(VIDEO_HELP)
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5, min_width=320):
                        video_in = VideoUpload(label="Video", sources=["upload", "webcam"], height=300,
                                               elem_id="input-video")
                        with gr.Row(equal_height=True):
                            video_prompt = PromptBox(label="What to find", placeholder="person . dog . ball", scale=4,
                                                     elem_id="video-prompt", max_lines=3)
                            video_run = gr.Button("Run", variant="primary", scale=1, min_width=90, elem_id="video-run")
                            video_stop = gr.Button("Stop", scale=1, min_width=70, elem_id="video-stop")
                        video_box = ThresholdSlider(minimum=0, maximum=1, value=0.35, step=0.01, label="Box threshold",
                                                    elem_id="video-box-threshold")
                        video_text = ThresholdSlider(minimum=0, maximum=1, value=0.25, step=0.01,
                                                     label="Text threshold", elem_id="video-text-threshold")
                        keyframes = gr.Slider(minimum=1, maximum=30, value=5, step=1, label="Keyframe interval",
                                              info="the detector runs on every k-th frame (1 = every frame, slowest)",
                                              elem_id="keyframe-interval")
                        video_sam = gr.Checkbox(value=registry.sam_enabled, interactive=registry.sam_enabled,
                                                label="Masks (SAM)")
                        gr.Markdown(f"At most {studio.limits.video_max_seconds:g} s or {studio.limits.video_max_frames} "
                                    f"frames of a clip are used, at up to {studio.limits.video_max_side} px, and a run "
                                    f"stops after {studio.limits.video_max_run_s:g} s; Stop keeps the frames done.")
                    with gr.Column(scale=6, min_width=320):
                        video_out = gr.Video(label="Tracked", interactive=False, height=440, elem_id="video-result")
                        video_status = gr.HTML(elem_id="video-status")
                        video_files = gr.File(label="Tracks (JSON with RLE masks, MOT text)", file_count="multiple",
                                              interactive=False, elem_id="video-files")
                        with gr.Accordion("Raw summary (JSON)", open=False):
                            video_summary = gr.JSON(label="Summary", elem_id="video-summary")
        curation = gr.State(Curation(), time_to_live=EDIT_STATE_SECONDS)
        # API-only parameters of /refine and /edit (never shown)
        api_object = RawNumber(value=0, visible=False, label="object")
        api_points = gr.JSON(value=[], visible=False, label="points")
        api_operation = RawText(value="", visible=False, label="operation")
        api_label = RawText(value="", visible=False, label="label")
        api_box = gr.JSON(value=[], visible=False, label="box")
        refine_trigger = gr.Button(visible=False)
        edit_trigger = gr.Button(visible=False)

        inputs = [image, prompt, box_threshold, text_threshold, nms_iou, use_sam, model, segmenter]
        outputs = [annotated, status, table, summary, details]
        edited = [*outputs, curation]
        examples = {}
        with example_slots:
            groups = [("shapes", demo_example_rows()), ("photos", photo_example_rows())]
            for name, rows in groups if demo_first else groups[::-1]:
                examples[name] = gr.Examples(
                    examples=rows, inputs=[image, prompt, box_threshold, text_threshold], outputs=outputs,
                    fn=lambda image, prompt, box, text: segment(image, prompt, box, text, 1.0, registry.sam_enabled, None,
                                                                 None)[:5],
                    cache_examples=on_spaces(), cache_mode="lazy", run_on_click=True, visible_columns=[0, 1],
                    label="Shapes scenes (the demo model knows these)" if name == "shapes"
                    else "Drawings (need the real weights)",
                    examples_per_page=3,
                )

        def after(event, with_failure: bool = True):
            """A result event: fresh look on success, cleared result on failure (never a stale picture)."""
            event.success(None, js=MARK_FRESH)
            if with_failure:
                event.failure(studio.cleared, None, outputs, api_visibility="private", queue=False).then(
                    None, js=MARK_FRESH)

        def show_banner(text: str) -> dict:
            return gr.update(visible=bool(text))

        demo.load(studio.banner, outputs=banner, api_name="status").then(
            show_banner, banner, banner, api_visibility="private", queue=False)
        opened = demo.load(
            studio.page_state, outputs=[model, segmenter, retry, examples["photos"].dataset, image, prompt,
                                        box_threshold, text_threshold], api_visibility="private",
        )
        after(opened.then(refilter, [*inputs, curation], outputs, api_name="opening_result", api_visibility="private",
                          concurrency_id="refilter", concurrency_limit=4))
        retry.click(studio.retry_loads, outputs=banner, api_name="retry", concurrency_id="models").then(
            show_banner, banner, banner, api_visibility="private", queue=False).then(
            studio.page_state, outputs=[model, segmenter, retry, examples["photos"].dataset, image, prompt,
                                        box_threshold, text_threshold], api_visibility="private",
        )

        image.upload(
            encode, [image, model, use_sam, segmenter], image_info, api_name="encode", show_progress="minimal",
            concurrency_id="models",
        ).success(
            show, [*inputs, curation], edited, api_name="show_after_upload", api_visibility="private",
            show_progress="minimal", concurrency_id="refilter", concurrency_limit=4,
        ).success(None, js=MARK_FRESH)
        image.clear(studio.cleared, None, outputs, api_visibility="private", queue=False).then(
            lambda: "", None, image_info, api_visibility="private", queue=False)
        gr.on([image.upload, prompt.input], None, js=MARK_STALE)
        after(gr.on(
            [run.click, prompt.submit], segment, [*inputs, curation], edited, api_name="segment", show_progress="minimal",
            concurrency_id="models",
        ))
        sliders = [box_threshold, text_threshold, nms_iou]
        gr.on(
            [slider.input for slider in sliders], preview, [*inputs, curation], [annotated, status], api_visibility="private",
            trigger_mode="always_last", show_progress="hidden", concurrency_id="refilter", concurrency_limit=4,
        )
        after(gr.on(
            [*(slider.release for slider in sliders), use_sam.input], refilter, [*inputs, curation], outputs, api_name="refilter",
            trigger_mode="always_last", show_progress="hidden", concurrency_id="refilter", concurrency_limit=4,
        ))
        for menu, choose, name in ((model, studio.choose_model, "model"), (segmenter, studio.choose_segmenter, "segmenter")):
            after(menu.input(choose, menu, menu, api_visibility="private", concurrency_id="refilter",
                             concurrency_limit=4).then(
                refilter, [*inputs, curation], outputs, api_name=f"{name}_result", api_visibility="private", show_progress="minimal",
                concurrency_id="refilter", concurrency_limit=4,
            ))
        download_button.click(export, [*inputs, curation], download, api_name="export", concurrency_id="models").success(
            None, js=CLICK_DOWNLOAD)

        # Curation: the page's clicks and buttons (private), and the two API endpoints. All run one at a time, so
        # each sees the session's edits as the previous one left them. A failed edit keeps the result on show.
        edit_queue = {"concurrency_id": "edits", "concurrency_limit": 1, "show_progress": "hidden"}
        annotated.select(click, [*inputs, curation, click_mode, label], edited, api_visibility="private", **edit_queue)
        table.select(select_row, [*inputs, curation], edited, api_visibility="private", **edit_queue)
        for button, operation in ((undo_button, "undo_point"), (reset_button, "reset"), (next_button, "next_mask"),
                                  (drop_button, "drop"), (relabel_button, "relabel"), (clear_button, "clear")):
            button.click(on_gpu(functools.partial(studio.edit_selected, operation), duration=20),
                         [*inputs, curation, label], edited, api_visibility="private", **edit_queue)
        refine_trigger.click(refine, [*inputs, api_object, api_points, curation], edited, api_name="refine", **edit_queue)
        edit_trigger.click(edit, [*inputs, api_operation, api_object, api_label, api_box, curation], edited,
                           api_name="edit", **edit_queue)
        prompt.change(label_choices, prompt, label, api_visibility="private", queue=False)

        # Videos queue on their own (one at a time): a long clip never holds up the Image tab's events.
        gr.on(
            [video_run.click, video_prompt.submit], on_gpu(video_tab.run, duration=int(studio.limits.video_max_run_s)),
            [video_in, video_prompt, video_box, video_text, keyframes, video_sam, model, segmenter],
            [video_out, video_status, video_files, video_summary], api_name="video", concurrency_id="video",
            concurrency_limit=1, show_progress="minimal",
        )
        video_stop.click(video_tab.stop, None, None, api_visibility="private", queue=False)
    return demo


def label_choices(prompt: str | None) -> dict:
    """The label menu follows the prompt: its phrases, the first one chosen (any other text can be typed)."""
    try:
        phrases = split_phrases(normalize_caption(prompt)) if isinstance(prompt, str) and prompt.strip() else []
    except ValueError:  # a prompt without words: nothing to offer yet
        phrases = []
    return gr.update(choices=phrases, value=phrases[0] if phrases else None)


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
            js=JS,
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
