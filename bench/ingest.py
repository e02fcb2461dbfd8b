"""Ingest throughput, measured side by side in ONE run on this machine, printed as ratios (README, "Speed").

Rows: (1) the lab handout's way (one image at a time, full decode, eager fp32, in a fresh process); (2) the
model alone per backend, and the default one at the shipped features; (3) ingest's decode → embed stage in
process; (4) ``imgsearch ingest`` end to end in its own process (handout features and shipped defaults), with
its peak RSS; (5) the same at 500 and 2,000 images; then each image's cost besides the model, the bound it
sets, and how closely each backend's vectors follow eager fp32. The headline (shipped defaults vs row 1) is
the median of ``--rounds`` alternating runs. ResNet50 runs with random weights (speed does not depend on
them), on camera-sized JPEGs (mosaics of real images with grain) made once into ``$IMGSEARCH_CACHE/bench``.

    python bench/ingest.py [--model resnet50|efficientnet-lite0] [--images 200] [--rss 500,2000]
                           [--device cpu|cuda] [--json] [--out docs/ingest-bench]
    python bench/ingest.py --device cuda --no-store   # on a GPU machine without Chroma installed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import REPO, cli, jpeg_with_comment, log, peak_rss, write_report
from imgsearch.core.config import resolve
from imgsearch.core.prepare import HANDOUT_VIEWS, MEAN, STD, Views, load_views
from imgsearch.core.presets import DEFAULT_PRESET, PRESETS
from imgsearch.core.runtime import BACKENDS, CALIBRATION, cache_dir, choose_backend, usable_cpus

HANDOUT_FEATURES = ["--features", "handout"]
DEFAULT_FEATURES: list[str] = []  # what a user gets without flags
SHIPPED = PRESETS[DEFAULT_PRESET]
MODELS = {
    "resnet50": "ResNet50 with random weights (speed does not depend on weight values)",
    "efficientnet-lite0": "EfficientNet-Lite0 with its real ImageNet weights",
}
SIZES = ((4000, 3000), (3648, 2736), (3456, 2304))  # 12, 10 and 8 megapixels
DISTINCT = 200  # distinct camera images; larger folders repeat them with a unique comment
TARGETS = {  # issue 5's acceptance figures
    "end_to_end_default_vs_handout": 2.5,
    "end_to_end_default_vs_its_model_only": 0.8,
    "fastest_model_only_vs_eager": 2.0,
    "fastest_end_to_end_vs_handout": 3.5,
}


# -- camera-sized images --------------------------------------------------------------------------
def _sources() -> list[Path]:
    return sorted(CALIBRATION.glob("photo-*.jpg")) + sorted((REPO / "examples" / "library").glob("*/*.jpg"))


def _make_camera_image(args: tuple[int, str]) -> None:
    from PIL import Image

    index, dest = args
    rng = random.Random(index)
    width, height = rng.choice(SIZES)
    if rng.random() < 0.3:
        width, height = height, width
    cols, rows = rng.choice([(1, 1), (2, 2), (3, 2)])
    canvas = Image.new("RGB", (width, height))
    sources = _sources()
    for r in range(rows):
        for c in range(cols):
            box = (c * width // cols, r * height // rows, (c + 1) * width // cols, (r + 1) * height // rows)
            with Image.open(rng.choice(sources)) as tile:
                canvas.paste(tile.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.BILINEAR), box)
    grain = np.random.default_rng(index).normal(0, 10, (512, 512, 3)).astype(np.int16)
    pixels = np.asarray(canvas, dtype=np.int16)
    reps = (-(-height // 512), -(-width // 512), 1)
    pixels = np.clip(pixels + np.tile(grain, reps)[:height, :width], 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(dest, quality=90)


def camera_folder(n: int) -> Path:
    """A folder of ``n`` camera-sized JPEGs, made once and cached: hard links to the distinct images, or beyond
    DISTINCT copies of them each with a unique JPEG comment."""
    from concurrent.futures import ProcessPoolExecutor

    base = cache_dir() / "bench" / "camera-distinct"
    base.mkdir(parents=True, exist_ok=True)
    todo = [(i, str(base / f"img{i:04d}.jpg")) for i in range(DISTINCT) if not (base / f"img{i:04d}.jpg").exists()]
    if todo:
        log(f"generating {len(todo)} camera-sized JPEGs in {base} (once) ...")
        with ProcessPoolExecutor(usable_cpus()) as pool:
            list(pool.map(_make_camera_image, todo))
    folder = cache_dir() / "bench" / f"camera-{n}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        src = base / f"img{i % DISTINCT:04d}.jpg"
        dest = folder / (src.name if n <= DISTINCT else f"img{i:05d}.jpg")
        if dest.exists():
            continue
        if n <= DISTINCT:
            os.link(src, dest)
        else:
            dest.write_bytes(jpeg_with_comment(src.read_bytes(), f"imgsearch bench copy {i}"))
    return folder


def describe_folder(folder: Path) -> dict[str, float]:
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    pixels = []
    for f in files[:DISTINCT]:
        with Image.open(f) as img:
            pixels.append(img.width * img.height)
    return {
        "files": len(files),
        "megapixels_mean": round(float(np.mean(pixels)) / 1e6, 2),
        "mb_mean": round(float(np.mean([f.stat().st_size for f in files[:DISTINCT]])) / 1e6, 2),
    }


# -- rows -----------------------------------------------------------------------------------------
def random_resnet50() -> Path:
    """A random-weights ResNet50 checkpoint (speed does not depend on the weights' values)."""
    import torch
    from torchvision.models import resnet50

    path = cache_dir() / "bench" / "resnet50-random.pth"
    if not path.exists():
        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(resnet50(weights=None).state_dict(), path)
    return path


def handout_way(files: list[Path], model: str, weights: Path | None, seconds: float) -> dict[str, Any]:
    """Row 1 in a fresh process, as a user runs it: in this one, the thread pools the other rows
    left behind (onnxruntime's, torch's) slowed later rounds of the eager loop tenfold."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_handout_loop, files, model, weights, seconds).result()


def _handout_loop(files: list[Path], model: str, weights: Path | None, seconds: float) -> dict[str, Any]:
    """The handout's loop: PIL full decode, torchvision transforms, batch of 1, eager fp32, the conv
    trunk then a global average pool (for ResNet50, exactly its children()[:-1])."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from imgsearch.core.backbones import BACKBONES

    torch.set_num_threads(usable_cpus())
    backbone = BACKBONES[model]
    trunk = backbone.build(backbone.default_variant, weights)[0].eval()

    def features(x: torch.Tensor) -> torch.Tensor:
        return trunk(x).mean(dim=(2, 3))

    steps = [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    tf = transforms.Compose([*steps, transforms.Normalize(MEAN.tolist(), STD.tolist())])
    with torch.no_grad():
        for f in files[:2]:  # warm-up, as for every other row (first calls allocate and pick kernels)
            features(tf(Image.open(f).convert("RGB")).unsqueeze(0))
    done, started = 0, time.perf_counter()
    with torch.no_grad():
        for f in files:
            x = tf(Image.open(f).convert("RGB")).unsqueeze(0)
            torch.nn.functional.normalize(features(x).flatten(1), dim=1)
            done += 1
            if time.perf_counter() - started > seconds and done >= 40:
                break
    return {"images": done, "images_per_second": done / (time.perf_counter() - started)}


def sample_batches(files: list[Path], views: Views) -> list[np.ndarray]:
    """Pre-made model input of 8 images, one batch per scale of ``views``."""
    arrays = [load_views(f, views)[0] for f in files[:8]]
    return [np.stack([a[i] for a in arrays]) for i in range(len(views.scales))]


def model_only(
    model: str,
    backend: str,
    device: str,
    weights: Path | None,
    files: list[Path],
    seconds: float,
    shipped: bool = False,
) -> float:
    """Images/s of the embedder alone (trunk + pooling) on pre-made tensors of 8 images: the
    handout's features, or with ``shipped`` the default preset's."""
    from imgsearch.core.backbones import load_embedder

    log(f"model only: {backend} on {device}{', default features' if shipped else ''} ...")
    views, pooling = (Views(SHIPPED.crop, SHIPPED.scales), SHIPPED.pooling) if shipped else (HANDOUT_VIEWS, "avg")
    batches = sample_batches(files, views)
    embedder = load_embedder(model, weights=weights, device=device, pooling=pooling, views=views, backend=backend)
    embedder.embed(batches)
    embedder.embed(batches)  # warm-up (allocations, ORT's first run, cuDNN autotuning)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed(batches)
        done += len(batches[0])
    return done / (time.perf_counter() - started)


def ms_each(work: Callable[[Path], Any], files: list[Path]) -> float:
    """Milliseconds per file of ``work``, to 0.01."""
    started = time.perf_counter()
    for f in files:
        work(f)
    return round((time.perf_counter() - started) / len(files) * 1000, 2)


def cpu_costs(files: list[Path], limit: int = 60) -> dict[str, float]:
    """Milliseconds of one core per image besides the model: draft decode + preprocessing, and the hash."""
    from imgsearch.ingest.sync import file_sha256

    load_views(files[0], HANDOUT_VIEWS)  # warm-up
    return {
        "decode_preprocess_ms": ms_each(lambda f: load_views(f, HANDOUT_VIEWS), files[:limit]),
        "sha256_ms": ms_each(lambda f: file_sha256(str(f)), files[:limit]),
    }


def bound(model_ips: float, costs: dict[str, float]) -> float:
    """End to end / model-only with a perfect overlap: the model's core-ms per image (all cores
    busy) over the model's plus everything else's core-ms per image."""
    model_ms = usable_cpus() * 1000 / model_ips
    return model_ms / (model_ms + costs["decode_preprocess_ms"] + costs["sha256_ms"])


def pipeline(files: list[Path], model: str, backend: str, device: str, weights: Path | None) -> float:
    """Images/s of ingest's decode → preprocess → embed stage alone, in this process (no store)."""
    from imgsearch.core.backbones import load_embedder
    from imgsearch.core.batching import embed_files

    log(f"pipeline without store: {backend} on {device} ...")
    embedder = load_embedder(model, weights=weights, device=device, pooling="avg", views=HANDOUT_VIEWS, backend=backend)
    started = time.perf_counter()
    done = sum(e.vector is not None for e in embed_files(list(map(str, files)), embedder))
    return done / (time.perf_counter() - started)


def end_to_end(
    folder: Path, model: str, backend: str | None, device: str, weights: Path | None, features: list[str]
) -> dict[str, Any]:
    """`imgsearch ingest` as a user runs it, in its own process (``backend`` None: the default one);
    peak RSS from the kernel."""
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-") as tmp:
        cmd = cli("ingest", folder, "--db", f"{tmp}/db", "--json", "--model", model, "--device", device, *features)
        cmd += ["--weights", str(weights)] if weights else []
        cmd += ["--backend", backend] if backend else []
        run = peak_rss(cmd, " ".join(cmd), stdout=True)
    report = json.loads(run["stdout"])
    return {
        "images": report["embedded"],
        "images_per_second": report["images_per_second"],
        "ingest_seconds": report["seconds"],
        "wall_seconds": round(run["seconds"], 2),
        "peak_rss_mb": round(run["peak_rss_mb"]),
    }


def backend_agreement(backends: list[str], device: str) -> dict[str, Any]:
    """Each backend's vectors against eager fp32 on CPU, with EfficientNet-Lite0's real weights on the
    demo library and its queries, at the shipped default features (the ingest pipeline embeds)."""
    from imgsearch.core.backbones import load_embedder
    from imgsearch.core.batching import embed_files
    from imgsearch.evaluation.evaluate import agreement

    examples = REPO / "examples"
    paths = sorted(map(str, (examples / "library").glob("*/*.jpg"))) + sorted(
        map(str, (examples / "queries").glob("*"))
    )

    def vectors(backend: str, dev: str) -> np.ndarray:
        embedder = load_embedder("efficientnet-lite0", device=dev, backend=backend)
        return np.stack([e.vector for e in embed_files(paths, embedder)])

    reference = vectors("torch", "cpu")
    out = {}
    for backend in backends:
        dev = device if backend == "torch" else "cpu"
        if backend == "torch" and dev == "cpu":
            continue
        log(f"agreement: {backend} on {dev} vs torch fp32 on cpu, {len(paths)} images")
        out[f"{backend}@{dev}"] = agreement(reference, vectors(backend, dev)).as_dict()
    return out


def tables(r: dict[str, Any]) -> str:
    lines: list[str] = []
    out = lines.append
    h = r["handout_way"]["images_per_second"]
    eager = r["model_only_images_per_second"]["torch"]
    img = r["images"]
    out(f"{MODELS[r.get('model', 'resnet50')]}; {r['machine']['cpus']} CPUs")
    out(f"shipped defaults: the {r.get('default_preset')!r} feature preset on the {r['default_backend']} backend")
    out(f"{img['files']} camera-sized JPEGs, {img['megapixels_mean']} MP and {img['mb_mean']} MB on average\n")
    out(f"{'row':58} {'img/s':>8} {'x handout':>10} {'x eager':>8} {'peak RSS':>9}")
    speeds = {
        "2. model only: {}": r["model_only_images_per_second"],
        "2. model only: {}, default features": r["model_only_default_features_images_per_second"],
        "3. decode+embed pipeline, no store: {}": r["pipeline_without_store_images_per_second"],
    }
    rows = [("1. handout's way (1 at a time, full decode, eager fp32)", h, "")]
    rows += [(label.format(b), v, "") for label, figures in speeds.items() for b, v in figures.items()]
    runs = [(f"4. imgsearch ingest: {k}", v) for k, v in r["end_to_end"].items()]
    runs += [(f"5. imgsearch ingest: {n} images ({r['default_backend']})", v) for n, v in r["peak_rss"].items()]
    rows += [(name, v["images_per_second"], f"{v['peak_rss_mb']} MB") for name, v in runs]
    for name, ips, rss in rows:
        out(f"{name:58} {ips:8.2f} {ips / h:10.2f} {ips / eager:8.2f} {rss:>9}")
    c = r["cpu_ms_per_image"]
    out(
        f"\nbesides the model, each image costs {c['decode_preprocess_ms']:.1f} ms of one core to decode (draft) and "
        f"preprocess and {c['sha256_ms']:.1f} ms to hash"
    )
    out("so end to end / model-only is at most, with a perfect overlap on every core:")
    for b, v in r["perfect_overlap_bound"].items():
        ms = r["machine"]["cpus"] * 1000 / r["model_only_images_per_second"][b]
        out(f"  {b:12} model {ms:6.1f} core-ms per image -> bound {v:.2f}")
    if r["agreement"]:
        out("\nagreement with eager fp32 (EfficientNet-Lite0 real weights, demo library + queries, default features)")
        for b, a in r["agreement"].items():
            out(
                f"  {b:12} cosine min {a['cosine_min']:.4f}  mean {a['cosine_mean']:.4f}  "
                f"top-10 overlap {a['top10_overlap']:.3f}"
            )
    out(f"\nratios (default backend here: {r['default_backend']}; fastest: {r['fastest_backend']})")
    out(f"  handout's way, img/s per round {r['handout_way']['rounds']} (row 1: the median)")
    out(f"  shipped defaults vs handout per round {r['headline_round_ratios']} (headline: the median)")
    for k, v in r["ratios"].items():
        target = r["targets"][k]
        out(f"  {k:42} {v:6.2f}  (target >= {target}: {'met' if v >= target else 'NOT met'})")
    shipped = r["end_to_end_default_vs_its_model_only_at_default_features"]
    if shipped is not None:
        out(f"  {'same, at the default features (no target)':42} {shipped:6.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=list(MODELS), help="backbone to measure")
    parser.add_argument("--images", type=int, default=200, help="camera-sized JPEGs for the end-to-end rows")
    parser.add_argument("--rss", default="500,2000", help="folder sizes for the peak-RSS rows ('' = skip)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing window of the handout and model rows")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: the torch rows run on the GPU)")
    parser.add_argument("--backends", default=",".join(b for b in BACKENDS if b != "auto"), help="backends to measure")
    parser.add_argument("--no-agreement", action="store_true", help="skip the backend agreement rows")
    parser.add_argument("--no-store", action="store_true", help="skip the rows that write to Chroma (ingest, RSS)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating handout / shipped-default runs (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--out", type=Path, help="also write the tables to OUT.md and the JSON to OUT.json")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]

    def device_of(backend: str) -> str:  # only torch runs on --device; the exported backends on the CPU
        return args.device if backend == "torch" else "cpu"

    default = choose_backend(resolve().backend, args.device).backend  # what `imgsearch ingest` runs when not told
    if "torch" not in backends or default not in backends:
        raise SystemExit(f"--backends must include torch (the eager reference) and {default} (the default here)")

    folder = camera_folder(args.images)
    weights = random_resnet50() if args.model == "resnet50" else None
    files = sorted(folder.glob("*.jpg"))
    for f in files:
        f.read_bytes()  # every row reads from a warm page cache, not only those after the first
    log(f"handout's way on {folder} ...")
    handout = handout_way(files, args.model, weights, args.seconds)
    log("per-image CPU cost of decode + preprocess and of hashing ...")
    costs = cpu_costs(files)
    model = {b: model_only(args.model, b, device_of(b), weights, files, args.seconds) for b in backends}
    model_shipped = model_only(args.model, default, device_of(default), weights, files, args.seconds, shipped=True)
    stage = {b: pipeline(files, args.model, b, device_of(b), weights) for b in backends}
    e2e: dict[str, dict[str, Any]] = {}
    for b in backends if not args.no_store else []:
        for name, feats in (("handout features", HANDOUT_FEATURES), ("default features", DEFAULT_FEATURES)):
            log(f"end to end: imgsearch ingest ({b} on {device_of(b)}, {name}) of {len(files)} images ...")
            e2e[f"{b}, {name}"] = end_to_end(folder, args.model, b, device_of(b), weights, feats)
    rss = {}
    for n in [int(x) for x in args.rss.split(",") if x and not args.no_store]:
        log(f"peak RSS: imgsearch ingest (shipped defaults) of {n} images ...")
        rss[str(n)] = end_to_end(camera_folder(n), args.model, None, args.device, weights, DEFAULT_FEATURES)
    agree = {} if args.no_agreement else backend_agreement(backends, args.device)
    # the headline pair again, alternating, so that a noisy neighbour moves one round, not the verdict
    rounds = [(handout["images_per_second"], e2e[f"{default}, default features"] if e2e else None)]
    for i in range(2, args.rounds + 1):
        log(f"round {i}/{args.rounds}: handout's way, then imgsearch ingest with the shipped defaults ...")
        again = handout_way(files, args.model, weights, args.seconds)["images_per_second"]
        shipped = None if args.no_store else end_to_end(folder, args.model, None, args.device, weights, [])
        rounds.append((again, shipped))
    round_ratios = [(s["images_per_second"] if s else stage[default]) / hw for hw, s in rounds]

    h = statistics.median(hw for hw, _ in rounds)
    fastest = max(model, key=lambda b: model[b])
    # without the store rows, the pipeline stage stands in for end to end
    through = {b: e2e[f"{b}, handout features"]["images_per_second"] if e2e else stage[b] for b in backends}
    ratios = {
        "end_to_end_default_vs_handout": statistics.median(round_ratios),
        "end_to_end_default_vs_its_model_only": through[default] / model[default],
        "fastest_model_only_vs_eager": model[fastest] / model["torch"],
        "fastest_end_to_end_vs_handout": through[fastest] / h,
    }
    shipped_ratio = e2e[f"{default}, default features"]["images_per_second"] / model_shipped if e2e else 0.0
    result = {
        "machine": {
            "cpus": usable_cpus(),
            "processor": platform.processor() or platform.machine(),
            "device": args.device,
        },
        "model": args.model,
        "model_note": MODELS[args.model],
        "default_preset": DEFAULT_PRESET,
        "images": describe_folder(folder),
        "handout_way": {**handout, "images_per_second": h, "rounds": [round(hw, 2) for hw, _ in rounds]},
        "headline_round_ratios": [round(x, 2) for x in round_ratios],
        "model_only_images_per_second": {b: round(v, 2) for b, v in model.items()},
        "model_only_default_features_images_per_second": {default: round(model_shipped, 2)},
        "pipeline_without_store_images_per_second": {b: round(v, 2) for b, v in stage.items()},
        "end_to_end": e2e,
        "peak_rss": rss,
        "cpu_ms_per_image": costs,
        # on the CPU only: a GPU's model time does not take cores from decoding
        "perfect_overlap_bound": {
            b: round(bound(v, costs), 3) for b, v in model.items() if b != "torch" or args.device == "cpu"
        },
        "agreement": agree,
        "default_backend": default,
        "fastest_backend": fastest,
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        # not a target: the same ratio for the features the product ships (more model work per decode)
        "end_to_end_default_vs_its_model_only_at_default_features": round(shipped_ratio, 2) if e2e else None,
        "targets": TARGETS,
    }
    print(json.dumps(result) if args.json else tables(result))
    if args.out:
        command = "python bench/ingest.py " + " ".join(sys.argv[1:])
        write_report(args.out, f"Written by `{command}`:\n\n```\n{tables(result)}\n```\n", result)


if __name__ == "__main__":
    main()
