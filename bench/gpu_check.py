"""The one prepared GPU check: the CUDA deformable-attention op and the detector's GPU speed (< 6 min on H100).

    python bench/gpu_check.py --json $OUT/gpu_check.json     # on a GPU machine, from the repo root
    python bench/gpu_check.py --dry-run                      # CPU, tiny sizes: exercises the script itself

Sections (each prints as it goes; a table at the end; exit code 1 if a check failed):
1. build   JIT-build the op for the visible GPU (or load a prebuilt one); build seconds.
2. op      forward vs the PyTorch path: fp32 max|diff| <= 1e-5; bf16 / fp16 value (fp32 locations and
           weights, fp32 accumulation) vs the PyTorch path on the same rounded values: <= 1e-2 (bf16) and
           <= 2e-3 (fp16), i.e. about one output rounding step for |out| < 4; backward vs autograd of the
           PyTorch path (fp32, rel. 1e-4); gradcheck fp64 on a tiny case; torch.library.opcheck;
           torch.compile(fullgraph=True) of the dispatcher.
3. op time Swin-T scale at 800x1200 (4 levels, S = 19,947, M 8, D 32, P 4): Q = 900 (decoder) and Q = S
           (encoder), fp32 and bf16, forward and forward+backward, op vs PyTorch path (CUDA events, median).
4. model   swint_ogc with random weights (tests/fixtures/dino.py) at 800x1200: ours fp32, fp32+TF32,
           bf16 autocast (and with --compile, torch.compile in bf16) vs transformers'
           GroundingDinoForObjectDetection (same weights, fp32 and bf16 autocast) in one run;
           CUDA kernels per forward; ours-vs-transformers and bf16-vs-fp32 output differences and the
           queries above the 0.35 box threshold.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root: grounding/ and tests/fixtures/

from grounding.ops import backend  # noqa: E402
from grounding.ops.ms_deform_attn import backend_reason, ms_deform_attn  # noqa: E402
from grounding.ops.ms_deform_attn_torch import ms_deform_attn_torch  # noqa: E402
from grounding.precision import inference_precision  # noqa: E402

BOX_THRESHOLD = 0.35
LOW_PRECISION_TOLERANCE = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
CAPTION = "a cat . a remote control . the sofa ."
DECODER_NORM_SCALE = 0.05  # applied to both models' shared random weights (see time_model)


@dataclass
class Report:
    """Everything measured; printed as a table and optionally written as JSON."""

    device: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (section, item, value)
    failures: list[str] = field(default_factory=list)
    numbers: dict[str, float | str | bool] = field(default_factory=dict)
    json_path: Path | None = None  # rewritten after every number, so a run cut short keeps what it measured

    def write_json(self) -> None:
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps({"device": self.device, "numbers": self.numbers, "failures": self.failures}, indent=2))

    def add(self, section: str, item: str, value: float | str | bool, unit: str = "") -> None:
        self.numbers[f"{section}/{item}"] = value
        text = f"{value:.4g}{unit}" if isinstance(value, float) else f"{value}{unit}"
        self.rows.append((section, item, text))
        print(f"  [{section}] {item}: {text}", flush=True)
        self.write_json()

    def check(self, section: str, item: str, ok: bool, detail: str) -> None:
        self.add(section, item, f"{'ok' if ok else 'FAIL'} ({detail})")
        if not ok:
            self.failures.append(f"{section}/{item}: {detail}")

    def table(self) -> str:
        width = max(len(f"{s} {i}") for s, i, _ in self.rows) + 2
        lines = [f"GPU check on {self.device}", "-" * (width + 40)]
        lines += [f"{f'{s} {i}':<{width}}{v}" for s, i, v in self.rows]
        return "\n".join(lines)


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median milliseconds per call (CUDA events on GPU, wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def deform_inputs(shapes, batch, queries, heads, channels, points, device, dtype=torch.float32, seed=0):
    """Random op inputs: value [B, S, M, D], shapes [L, 2], starts [L], locations [B, Q, M, L, P, 2]
    in [-0.1, 1.1], softmaxed weights [B, Q, M, L, P]."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial_shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    levels = len(shapes)
    value = torch.randn(batch, int(areas.sum()), heads, channels, generator=gen)
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen) * 1.2 - 0.1
    weights = torch.rand(batch, queries, heads, levels * points, generator=gen).softmax(-1)
    weights = weights.view(batch, queries, heads, levels, points)
    tensors = (value.to(dtype), spatial_shapes, starts, locations.to(dtype), weights.to(dtype))
    return tuple(t.to(device) for t in tensors)


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature map sizes of strides 8, 16, 32 and the extra stride-64 level (ceil, as the convs give)."""
    shapes = []
    for stride in (8, 16, 32, 64):
        shapes.append((-(-height // stride), -(-width // stride)))
    return shapes


def check_build(report: Report, device: torch.device) -> bool:
    start = time.perf_counter()
    available = backend(device) == "cuda-extension"
    report.add("build", "backend", backend_reason(device))
    report.add("build", "seconds (build or load)", time.perf_counter() - start, " s")
    if device.type == "cuda" and not available:
        report.failures.append("build: the CUDA op is unavailable on this GPU")
    return available


def check_op(report: Report, device: torch.device, available: bool) -> None:
    if not available:
        report.add("op", "correctness", "skipped (no compiled op)")
        return
    op = torch.ops.grounding_ops.ms_deform_attn
    shapes = [(25, 38), (13, 19), (7, 10), (4, 5)]
    value, ss, starts, loc, w = deform_inputs(shapes, 2, 300, 8, 32, 4, device)
    reference = ms_deform_attn_torch(value, ss, starts, loc, w)
    diff = (op(value, ss, starts, loc, w) - reference).abs().max().item()
    report.check("op", "forward fp32 vs pytorch", diff <= 1e-5, f"max|diff| {diff:.2e} <= 1e-5")

    for dtype, tolerance in LOW_PRECISION_TOLERANCE.items():
        low = value.to(dtype)
        expected = ms_deform_attn_torch(low.float(), ss, starts, loc, w)
        diff = (op(low, ss, starts, loc, w).float() - expected).abs().max().item()
        name = str(dtype).removeprefix("torch.")
        report.check("op", f"forward {name} vs pytorch", diff <= tolerance, f"max|diff| {diff:.2e} <= {tolerance}")

    leaves = [t.clone().requires_grad_() for t in (value, loc, w)]
    ours = [t.clone().requires_grad_() for t in (value, loc, w)]
    grad_out = torch.randn_like(reference)
    ms_deform_attn_torch(leaves[0], ss, starts, leaves[1], leaves[2]).backward(grad_out)
    op(ours[0], ss, starts, ours[1], ours[2]).backward(grad_out)
    for name, a, b in zip(("value", "locations", "weights"), ours, leaves):
        rel = ((a.grad - b.grad).norm() / b.grad.norm()).item()
        report.check("op", f"grad {name} vs pytorch", rel <= 1e-4, f"rel. error {rel:.2e} <= 1e-4")

    tiny = deform_inputs([(3, 4), (2, 2)], 1, 3, 2, 4, 2, device, dtype=torch.float64, seed=1)
    tv, tss, tst, tloc, tw = tiny
    args = (tv.requires_grad_(), tloc.requires_grad_(), tw.requires_grad_())
    ok = torch.autograd.gradcheck(lambda v, l_, w_: op(v, tss, tst, l_, w_), args, raise_exception=False)
    report.check("op", "gradcheck fp64", bool(ok), "torch.autograd.gradcheck")

    try:
        sample = (value[:1].clone().requires_grad_(), ss, starts, loc[:1, :20].clone().requires_grad_(),
                  w[:1, :20].clone().requires_grad_())
        torch.library.opcheck(op.default, sample)
        report.check("op", "opcheck", True, "schema, fake, autograd registration")
    except Exception as err:  # report, keep going
        report.check("op", "opcheck", False, str(err).splitlines()[0])

    compiled = torch.compile(ms_deform_attn, fullgraph=True)
    diff = (compiled(value, ss, starts, loc, w) - reference).abs().max().item()
    report.check("op", "torch.compile fullgraph", diff <= 1e-5, f"max|diff| {diff:.2e}")


def time_op(report: Report, device: torch.device, available: bool, image_hw: tuple[int, int], iters: int,
            decoder_queries: int) -> None:
    shapes = level_shapes(*image_hw)
    total = sum(h * w for h, w in shapes)
    report.add("op time", "levels / S", f"{shapes} / {total}")
    for label, queries in ((f"Q={decoder_queries}", decoder_queries), (f"Q=S={total}", total)):
        for dtype in (torch.float32, torch.bfloat16):
            value, ss, starts, loc, w = deform_inputs(shapes, 1, queries, 8, 32, 4, device)
            value = value.to(dtype)
            name = str(dtype).removeprefix("torch.")
            candidates = {"pytorch": lambda v, *a: ms_deform_attn_torch(v.float(), *a).to(v.dtype)}
            if available:
                candidates["op"] = torch.ops.grounding_ops.ms_deform_attn
            for impl, fn in candidates.items():
                leaves = [value.clone().requires_grad_(), loc.clone().requires_grad_(), w.clone().requires_grad_()]

                def forward():
                    with torch.no_grad():
                        fn(value, ss, starts, loc, w)

                def forward_backward():
                    fn(leaves[0], ss, starts, leaves[1], leaves[2]).float().sum().backward()

                for kind, run, n in (("fwd", forward, iters), ("fwd+bwd", forward_backward, max(3, iters // 2))):
                    item = f"{label} {name} {kind} {impl}"
                    try:
                        report.add("op time", item, time_ms(run, device, n), " ms")
                    except Exception as err:  # one broken path must not hide the other numbers
                        report.check("op time", item, False, f"{type(err).__name__}: {str(err).splitlines()[0]}")


def caption_tokens(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from grounding.text import load_tokenizer

    encoded = load_tokenizer()(CAPTION, return_tensors="pt")
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def count_kernels(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def compare_outputs(report: Report, name: str, probs_a, boxes_a, probs_b, boxes_b) -> None:
    """probs [Q, T], boxes [Q, 4] of two runs. Query order may differ (top-k selection on near-equal scores),
    so the detections above BOX_THRESHOLD are matched by box: each of run b's boxes to the nearest of run a's
    (mean |d cxcywh|); a match within 0.01 with max-prob within 0.05 counts as the same detection."""
    report.add("model", f"{name} max|dprob| same query", (probs_a - probs_b).abs().max().item())
    keep_a = probs_a.max(-1).values > BOX_THRESHOLD
    keep_b = probs_b.max(-1).values > BOX_THRESHOLD
    boxes_a, boxes_b = boxes_a[keep_a], boxes_b[keep_b]
    score_a, score_b = probs_a.max(-1).values[keep_a], probs_b.max(-1).values[keep_b]
    same = 0
    if len(boxes_a) and len(boxes_b):
        distance = (boxes_b[:, None] - boxes_a[None]).abs().mean(-1)  # [Nb, Na]
        nearest = distance.min(1)
        close_score = (score_b - score_a[nearest.indices]).abs() <= 0.05
        same = int(((nearest.values <= 0.01) & close_score).sum())
    report.add("model", f"{name} detections > {BOX_THRESHOLD}",
               f"{len(boxes_a)} vs {len(boxes_b)}, {same} of the latter matched")


def cuda_graph(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` (static inputs) captured once as a CUDA graph under bf16 autocast (weight-cast cache off, as capture
    needs); the returned callable replays it and returns the captured outputs. Captured on first call."""
    graph: list = []

    def replay():
        if not graph:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, cache_enabled=False):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):  # warm-up on a side stream (lazy init, caches) before capture
                        fn()
                torch.cuda.current_stream().wait_stream(side)
                captured = torch.cuda.CUDAGraph()
                with torch.cuda.graph(captured):
                    outputs = fn()
            graph.extend([captured, outputs])
        graph[0].replay()
        return graph[1]

    return replay


def host_syncs(fn: Callable[[], object]) -> list[str]:
    """file:line of every operation in one call of `fn` that makes the host wait for the GPU (or copies from
    pageable host memory): what CUDA-graph capture cannot contain. Uses torch's sync debug mode ("warn")."""
    import warnings

    fn()  # first-call work (caches, library set-up) is not per-forward
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower()]


def time_model(report: Report, device: torch.device, image_hw: tuple[int, int], iters: int, tiny: bool,
               compile_model: bool) -> None:
    from grounding.config import swint_ogc
    from grounding.config import tiny as tiny_config
    from grounding.keymap import as_transformers_port
    from tests.fixtures.dino import load_hf_reference, random_model

    config = tiny_config() if tiny else swint_ogc()
    model = random_model(as_transformers_port(config), seed=0)
    with torch.no_grad():  # random decoder states saturate every score at 1.0; 20x smaller logits spread them
        model.transformer.decoder.norm.weight.mul_(DECODER_NORM_SCALE)
        model.transformer.decoder.norm.bias.mul_(DECODER_NORM_SCALE)
    with tempfile.TemporaryDirectory() as directory:
        hf_model, _ = load_hf_reference(model, directory)
    model, hf_model = model.to(device), hf_model.to(device)
    input_ids, attention_mask = caption_tokens(device)
    pixel_values = torch.randn(1, 3, *image_hw, generator=torch.Generator().manual_seed(0)).to(device)
    pixel_mask = torch.ones(1, *image_hw, dtype=torch.bool, device=device)
    report.add("model", "config / input", f"{'tiny' if tiny else 'swint_ogc'} / {image_hw[0]}x{image_hw[1]}, "
               f"{input_ids.shape[1]} tokens")

    def ours():
        return model(input_ids, attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)

    def theirs():
        return hf_model(pixel_values=pixel_values, pixel_mask=pixel_mask.long(), input_ids=input_ids,
                        attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids))

    runs = {
        "ours fp32": (ours, "fp32", False),
        "ours fp32+tf32": (ours, "fp32", True),
        "ours bf16": (ours, "bf16", True),
        "transformers fp32": (theirs, "fp32", False),
        "transformers bf16": (theirs, "bf16", True),
    }
    if device.type == "cuda":
        try:
            with inference_precision(device, "bf16"):
                syncs = host_syncs(ours)
            report.add("model", "ours bf16 host syncs per forward", f"{len(syncs)}: {', '.join(dict.fromkeys(syncs))}")
        except Exception as err:  # report, keep going
            report.check("model", "host syncs", False, f"{type(err).__name__}: {str(err).splitlines()[0]}")
        runs["ours bf16 CUDA graph"] = (cuda_graph(ours, device), "bf16", True)
    if compile_model:
        compiled = torch.compile(model)

        def ours_compiled():
            return compiled(input_ids, attention_mask, pixel_values=pixel_values, pixel_mask=pixel_mask)

        runs["ours bf16 torch.compile"] = (ours_compiled, "bf16", True)
    results = {}
    for name, (fn, precision, tf32) in runs.items():
        with inference_precision(device, precision):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                out = fn()
                ms = time_ms(fn, device, iters, warmup=1 if device.type == "cpu" else 2)
            except Exception as err:  # a failing variant must not hide the others
                report.check("model", name, False, f"{type(err).__name__}: {str(err).splitlines()[0]}")
                continue
            report.add("model", f"{name} forward", ms, " ms")
            if device.type == "cuda" and name in ("ours bf16", "transformers fp32"):
                report.add("model", f"{name} CUDA kernels/forward", count_kernels(fn))
        logits = out.pred_logits if hasattr(out, "pred_logits") else out.logits
        boxes = out.pred_boxes
        tokens = input_ids.shape[1]
        results[name] = (logits[0, :, :tokens].float().sigmoid().cpu(), boxes[0].float().cpu(), ms)

    if "ours fp32" in results and "transformers fp32" in results:
        compare_outputs(report, "ours vs transformers fp32", *results["ours fp32"][:2],
                        *results["transformers fp32"][:2])
    if "ours fp32" in results and "ours bf16" in results:
        compare_outputs(report, "ours bf16 vs fp32", *results["ours bf16"][:2], *results["ours fp32"][:2])
    if "ours bf16 CUDA graph" in results and "ours fp32" in results:
        compare_outputs(report, "ours bf16 CUDA graph vs fp32", *results["ours bf16 CUDA graph"][:2],
                        *results["ours fp32"][:2])
        graph_speedup = results["transformers fp32"][2] / results["ours bf16 CUDA graph"][2]
        report.add("model", "speedup ours bf16 CUDA graph vs transformers fp32", graph_speedup, "x")
    if "ours bf16" in results and "transformers fp32" in results:
        speedup = results["transformers fp32"][2] / results["ours bf16"][2]
        report.add("model", "speedup ours bf16 vs transformers fp32", speedup, "x")
        if device.type == "cuda":
            best = min((name for name in results if name.startswith("ours bf16")), key=lambda n: results[n][2])
            best_ms = results[best][2]
            best_speedup = results["transformers fp32"][2] / best_ms
            report.check("model", "target <= 20 ms bf16", best_ms <= 20.0, f"{best}: {best_ms:.1f} ms")
            report.check("model", "target >= 4x transformers fp32", best_speedup >= 4.0, f"{best}: {best_speedup:.2f}x")


def time_sam(report: Report, device: torch.device, iters: int, tiny: bool) -> None:
    """SAM's image encoder (random vit_b, or the tiny variant): the package's attention vs ours through SDPA, in
    fp32 and under the bf16 / fp16 autocast of the precision policy; the SDPA embedding's distance to the package's."""
    import copy

    from grounding.precision import inference_precision
    from grounding.segmenters.sam import SAM_VARIANTS, build_sam, use_sdpa_attention

    variant = SAM_VARIANTS["tiny" if tiny else "vit_b"]
    torch.manual_seed(0)
    package = build_sam(variant).to(device)
    for name, parameter in package.image_encoder.named_parameters():
        if "rel_pos" in name:
            parameter.data.normal_(0, 0.1)
    sdpa = use_sdpa_attention(copy.deepcopy(package))
    pixels = torch.randn(1, 3, variant.img_size, variant.img_size, device=device)
    with torch.inference_mode():
        diff = (sdpa.image_encoder(pixels) - package.image_encoder(pixels)).abs().max().item()
    report.check("sam", f"{variant.name} sdpa vs package fp32 max|diff|", diff <= 1e-4, f"{diff:.2e}")
    for precision in ("fp32", "bf16", "fp16"):
        for label, model in (("package", package), ("sdpa", sdpa)):
            def run(model=model, precision=precision):
                with inference_precision(device, precision):
                    model.image_encoder(pixels)
            report.add("sam", f"{variant.name} encoder {label} {precision}", time_ms(run, device, max(1, iters // 4)), " ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script runs")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per measurement")
    parser.add_argument("--skip-model", action="store_true", help="only the op sections")
    parser.add_argument("--skip-op", action="store_true", help="only the build and the detector section")
    parser.add_argument("--skip-sam", action="store_true", help="no SAM image encoder section")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model) in bf16 (slow)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    report = Report(device=f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}", json_path=args.json)
    print(report.device, flush=True)
    image_hw = (64, 96) if args.dry_run else (800, 1200)
    decoder_queries = 64 if args.dry_run else 900
    iters = 1 if args.dry_run else args.iters
    start = time.perf_counter()

    print("1. build", flush=True)
    available = check_build(report, device)
    if not args.skip_op:
        print("2. op correctness", flush=True)
        check_op(report, device, available)
        print("3. op timing", flush=True)
        time_op(report, device, available, image_hw, iters, decoder_queries)
    if not args.skip_model:
        print("4. detector timing", flush=True)
        time_model(report, device, image_hw, iters, tiny=args.dry_run, compile_model=args.compile)
    if not args.skip_sam:
        print("5. SAM image encoder timing", flush=True)
        time_sam(report, device, iters, tiny=args.dry_run)
    report.add("total", "seconds", time.perf_counter() - start, " s")

    print()
    print(report.table())
    if report.failures:
        print("\nFAILED:\n  " + "\n  ".join(report.failures))
    report.write_json()
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
