"""Load test of the web API: concurrent clients against a store of >= 5,000 images while the worker ingests,
then a storm of 64-100 MP uploads per backend (docs/reliability.md, section 5, says how and what).

docker-compose's topology as processes (`chroma run`, `imgsearch worker`, `imgsearch serve`) on a library
derived from the demo's (kept in --workdir). Exit code 1 if any request got a 5xx (503 in the storm
excepted) or failed, a storm client was never served, or /healthz ever took 1 s or more.

    python bench/load.py [--size 5000] [--clients 8] [--requests 500] [--storm-clients 50]
                         [--storm-backends torch,default] [--out test-artifacts/load.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report
from bench.report import cli, in_threads, log, stop, wait_until, web_server

LIBRARY = report.REPO / "examples" / "library"
QUERIES = report.REPO / "examples" / "queries"
CHEAP = ["--pooling", "avg", "--crop", "center", "--scales", "224"]
MIX = {"search": 60, "by-id": 15, "stats": 15, "thumb": 10}
TRANSFORMS = 9  # derived copies per original at most: 593 x 9 = 5,337


def derive(src: Path, dest: Path, variant: int) -> None:
    """A transformed copy of a real image; ``variant`` picks the transform (and its seed)."""
    from PIL import Image, ImageEnhance, ImageOps

    rng = random.Random(f"{src.name}-{variant}")
    img = Image.open(src).convert("RGB")
    w, h = img.size
    kind = variant % 6
    if kind == 0:
        img = img.crop((rng.randint(0, w // 4), rng.randint(0, h // 4), w - rng.randint(0, w // 4), h))
    elif kind == 1:
        img = ImageOps.mirror(img)
    elif kind == 2:
        img = img.resize((max(8, int(w * rng.uniform(0.4, 0.8))), max(8, int(h * rng.uniform(0.4, 0.8)))))
    elif kind == 3:
        img = img.rotate(rng.uniform(-20, 20), expand=True, fillcolor=(255, 255, 255))
    elif kind == 4:
        img = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))).enhance(rng.uniform(0, 2))
    else:
        img = ImageOps.flip(img.crop((0, rng.randint(0, h // 5), w, h)))
    img.save(dest, "JPEG", quality=rng.randint(60, 95))


def build_library(root: Path, size: int, first_variant: int = 0) -> list[Path]:
    """``size`` derived images under root/CATEGORY/, variants from ``first_variant`` on (kept if present)."""
    originals = sorted(LIBRARY.glob("*/*.jpg"))
    made = []
    for variant in range(first_variant, first_variant + TRANSFORMS * 10):
        for src in originals:
            if len(made) >= size:
                return made
            dest = root / src.parent.name / f"{src.stem}_v{variant}.jpg"
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                derive(src, dest, variant)
            made.append(dest)
    return made


def watch_worker(status: Path, done: threading.Event, seen: Counter[str]) -> None:
    """Sample the worker's status file while the clients run: proof that it was ingesting meanwhile."""
    while not done.wait(0.5):
        try:
            state = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        seen[f"{state['state']} samples"] += 1
        if state["state"] == "syncing":
            seen["largest queue"] = max(seen["largest queue"], int(state.get("queue") or 0))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def latency_ms(seconds: list[float], qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """Percentiles ``qs`` (the nearest rank) and the largest of ``seconds``, in ms to 0.1."""
    ms = [s * 1000 for s in seconds]
    return {**{f"p{q}_ms": round(percentile(ms, q), 1) for q in qs}, "max_ms": round(max(ms, default=0), 1)}


def run_clients(url: str, args: argparse.Namespace, queries: list[Path], ids: list[str]) -> list[dict[str, Any]]:
    """Fire ``args.requests`` requests from ``args.clients`` threads; one record per request."""
    import httpx

    plan_rng = random.Random(args.seed)
    kinds = plan_rng.choices(list(MIX), weights=list(MIX.values()), k=args.requests)
    plan = [(kind, plan_rng.choice(queries), plan_rng.choice(ids), plan_rng.choice([1, 5, 10, 20])) for kind in kinds]
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    next_index = iter(range(len(plan)))

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                kind, query, id_, k = plan[i]
                started = time.perf_counter()
                try:
                    if kind == "search":
                        data = {"k": str(k)} | ({"where": "width>=64"} if i % 4 == 0 else {})
                        res = http.post("/api/search", files={"image": (query.name, query.read_bytes())}, data=data)
                    elif kind == "by-id":
                        res = http.post(f"/api/search/by-id/{id_}", data={"k": str(k)})
                    else:
                        res = http.get("/api/stats" if kind == "stats" else f"/api/images/{id_}/thumb")
                    status, error = res.status_code, ""
                except httpx.HTTPError as err:
                    status, error = 0, f"{type(err).__name__}: {err}"
                with lock:
                    records.append(
                        {"kind": kind, "status": status, "seconds": time.perf_counter() - started, "error": error}
                    )

    in_threads(lambda _: client(), args.clients)
    return records


def summarise(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"requests": len(rows), **latency_ms([r["seconds"] for r in rows])}

    by_kind = {kind: stats([r for r in records if r["kind"] == kind]) for kind in MIX}
    statuses = Counter(str(r["status"]) for r in records)
    return {
        "requests": len(records),
        "seconds": round(wall, 1),
        "throughput_rps": round(len(records) / wall, 2),
        "overall": stats(records),
        "by_kind": by_kind,
        "status_codes": dict(sorted(statuses.items())),
        "5xx": sum(1 for r in records if r["status"] >= 500),
        "transport_errors": sorted({r["error"] for r in records if r["error"]})[:10],
        "failed": sum(1 for r in records if r["status"] == 0),
    }


# real photos to upscale for the storm: the development photo set when present, else the demo library
PHOTOS = report.DATASETS / "holidays-dev" / "queries"
BIG_SIZES = [(9280, 6960), (10328, 7746), (11547, 8660)]  # 4:3 like the photos: 64.6, 80 and 99.997 MP
HEALTH_LIMIT_S = 1.0


def big_images(cache: Path, count: int) -> list[Path]:
    """``count`` real photos upscaled to 64-100 MP, alternately JPEG (bicubic) and PNG (nearest neighbour,
    so that it compresses to an uploadable size yet decodes at full size); made once, kept in ``cache``."""
    from PIL import Image

    photos = sorted(PHOTOS.rglob("*.jpg")) or sorted(LIBRARY.glob("*/*.jpg"))
    made = []
    for i in range(count):
        width, height = BIG_SIZES[i % len(BIG_SIZES)]
        png = i % 2 == 1
        src = photos[(i * 37) % len(photos)]
        dest = cache / f"{src.stem}_{width}x{height}.{'png' if png else 'jpg'}"
        if not dest.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as img:
                big = img.convert("RGB").resize(
                    (width, height), Image.Resampling.NEAREST if png else Image.Resampling.BICUBIC
                )
            big.save(dest, **({"compress_level": 6} if png else {"quality": 90}))
        made.append(dest)
    return made


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (``VmHWM``: its peak so far) in MB, from /proc."""
    return round(report.status_kb(pid, field + ":") / 1024, 1)


def time_healthz(http: Any, stop: Any, every: float, seconds: list[float]) -> None:
    """GET /healthz with ``http`` (an httpx.Client on the server) every ``every`` s until ``stop`` (a
    threading or multiprocessing Event) is set; each answer's latency (inf for a failure) into
    ``seconds`` as it comes. Shared with tests/test_service.py's overload test."""
    import httpx

    while not stop.wait(every):
        started = time.perf_counter()
        try:
            ok = http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        seconds.append(time.perf_counter() - started if ok else float("inf"))


def poll_health(url: str, stop: Any, out: Any) -> None:
    """GET /healthz every 0.1 s until ``stop`` (an Event) is set, then send the latencies (inf for a
    failure) through ``out``. Run in its own process: in this one the 50 clients' threads would hold
    the GIL and the figure would be the client's wait, not the server's."""
    import httpx

    seconds: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as http:
        out.send(None)  # polling from now on
        time_healthz(http, stop, 0.1, seconds)
    out.send(seconds)


def storm(url: str, pid: int, images: list[Path], clients: int, deadline_s: float) -> dict[str, Any]:
    """``clients`` uploads of ``images`` at once, each retried after its Retry-After until served."""
    import httpx

    attempts: list[dict[str, Any]] = []
    refusal: list[str] = []
    lock = threading.Lock()
    ctx = multiprocessing.get_context("spawn")
    done, (results, sink) = ctx.Event(), ctx.Pipe(duplex=False)
    poller = ctx.Process(target=poll_health, args=(url, done, sink))
    before = rss_mb(pid)
    peak = [before]

    def sample_rss() -> None:
        while not done.wait(0.2):
            peak[0] = max(peak[0], rss_mb(pid))

    def client(i: int) -> None:
        image = images[i % len(images)]
        data = image.read_bytes()
        deadline = time.monotonic() + deadline_s
        with httpx.Client(base_url=url, timeout=deadline_s) as http:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    res = http.post("/api/search", files={"image": (image.name, data)}, data={"k": "5"})
                    status, error, wait = res.status_code, "", int(res.headers.get("Retry-After", "0") or 0)
                except httpx.HTTPError as err:
                    status, error, wait = 0, f"{type(err).__name__}: {err}", 0
                with lock:
                    attempts.append(
                        {"client": i, "status": status, "seconds": time.perf_counter() - started, "error": error}
                    )
                    if status == 503 and not refusal:
                        refusal.append(res.json()["detail"])  # says the server's limits
                if status != 503:
                    return
                time.sleep(wait)

    sampler = threading.Thread(target=sample_rss)
    started = time.monotonic()
    poller.start()
    results.recv()
    sampler.start()
    in_threads(client, clients)
    wall = time.monotonic() - started
    done.set()
    health: list[float] = results.recv()
    poller.join()
    sampler.join()
    first = [a for a in attempts if a["status"] == 200]
    return {
        "clients": clients,
        "images": {p.name: f"{p.stat().st_size / 1e6:.1f} MB" for p in images},
        "seconds": round(wall, 1),
        "uploads": len(attempts),
        "status_codes": dict(sorted(Counter(str(a["status"]) for a in attempts).items())),
        "first_503": refusal[0] if refusal else "",
        "served": len({a["client"] for a in first}),
        "5xx_other_than_503": sum(1 for a in attempts if a["status"] >= 500 and a["status"] != 503),
        "transport_errors": sorted({a["error"] for a in attempts if a["error"]})[:10],
        "served_p50_s": round(percentile([a["seconds"] for a in first], 50), 2),
        "served_max_s": round(max((a["seconds"] for a in first), default=0), 2),
        "healthz": {
            "polls": len(health),
            **latency_ms(health, (50, 99)),
            "over_1s": sum(1 for h in health if h >= HEALTH_LIMIT_S),
            "failures": sum(1 for h in health if h == float("inf")),
        },
        "server_rss_mb": {"before": before, "peak_sampled": peak[0], "peak_vmhwm": rss_mb(pid, "VmHWM")},
    }


def after_storm(url: str, queries: list[Path]) -> dict[str, Any]:
    """Normal searches right after the storm: they must be served at once again."""
    import httpx

    seconds, codes = [], Counter[str]()
    with httpx.Client(base_url=url, timeout=60) as http:
        for q in queries[:10]:
            started = time.perf_counter()
            res = http.post("/api/search", files={"image": (q.name, q.read_bytes())}, data={"k": "5"})
            seconds.append(time.perf_counter() - started)
            codes[str(res.status_code)] += 1
    return {"searches": len(seconds), "status_codes": dict(codes), "p50_ms": round(percentile(seconds, 50) * 1000, 1)}


def storm_failed(run: dict[str, Any]) -> bool:
    s = run["storm"]
    return bool(
        s["5xx_other_than_503"]
        or s["transport_errors"]
        or s["served"] < s["clients"]
        or s["healthz"]["max_ms"] >= HEALTH_LIMIT_S * 1000
        or run["after"]["status_codes"] != {"200": run["after"]["searches"]}
    )


def storm_markdown(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    first = runs[0]["storm"]
    rows = [
        *report.md_table(
            "backend | uploads | status codes | served | 5xx but 503 | transport errors | seconds | served p50 / max s "
            "| /healthz p50 / p99 / max ms (polls ≥ 1 s of all) | server RSS MB before / peak | searches afterwards"
        ),
        *(
            f"| {r['backend']} | {s['uploads']} | {s['status_codes']} | {s['served']}/{s['clients']} | "
            f"{s['5xx_other_than_503']} | {len(s['transport_errors'])} | {s['seconds']} | "
            f"{s['served_p50_s']} / {s['served_max_s']} | {h['p50_ms']} / {h['p99_ms']} / {h['max_ms']} "
            f"({h['over_1s']} of {h['polls']}) | "
            f"{s['server_rss_mb']['before']} / **{s['server_rss_mb']['peak_vmhwm']}** | "
            f"{r['after']['status_codes']}, p50 {r['after']['p50_ms']} ms |"
            for r in runs
            for s in [r["storm"]]
            for h in [s["healthz"]]
        ),
    ]
    return (
        f"\n\n**Storm**: {first['clients']} clients at once, each uploading one of {len(first['images'])} real photos "
        f"upscaled to 64-100 MP ({', '.join(f'{k} {v}' for k, v in first['images'].items())}), retrying after "
        "503 + Retry-After until served; the server had its default limits on this machine (its first 503 said: "
        f'"{first["first_503"]}") and its upload cap raised to 100 MP (at the default 40 MP these uploads are '
        "refused from their header, 422, before any decoding).\n\n" + "\n".join(rows)
    )


def run_storm(
    args: argparse.Namespace, store: list[str], status: Path, backend: str, queries: list[Path]
) -> dict[str, Any]:
    """A fresh web server with ``backend`` (``default``: none given), the storm, searches afterwards."""
    extra = [] if backend == "default" else ["--backend", backend]
    options = [*store, "--status", status, "--max-upload-pixels", "100000000", "--max-upload-mb", "100", *extra]
    with open(args.workdir / f"web-storm-{backend}.log", "w") as out, web_server(options, out) as (web, url):
        images = big_images(args.workdir / "big", 6)
        result = storm(url, web.pid, images, args.storm_clients, args.storm_deadline)
        return {"backend": backend, "storm": result, "after": after_storm(url, queries)}


def markdown(result: dict[str, Any]) -> str:
    kinds = [*result["load"]["by_kind"].items(), ("all", result["load"]["overall"])]
    figures = ("p50_ms", "p95_ms", "p99_ms", "max_ms")
    rows = report.md_table(
        "requests | kind | p50 ms | p95 ms | p99 ms | max ms",
        [[s["requests"], k, *map(s.get, figures)] for k, s in kinds],
    )
    load, build = result["load"], result["build"]
    return (
        f"{load['requests']} requests from {result['clients']} clients in {load['seconds']} s: "
        f"**{load['throughput_rps']} requests/s**; status codes {load['status_codes']}; "
        f"5xx: **{load['5xx']}**, transport errors: {load['failed']}.\n"
        f"Store: {result['entries_before']} entries at the start, {result['entries_after']} at the end of the "
        f"load; the worker's state, sampled every 0.5 s during the load: {result['worker_states_during_load']}; "
        f"it had stored all {result['incoming']} images copied in as the load began "
        f"{result['incoming_stored_after_s']} s after the start (it writes rows in batches of 256).\n"
        f"Building the store: {build['images']} derived images ingested in {build['seconds']} s "
        f"({build['images_per_second']} img/s, {build['features']}).\n\n" + "\n".join(rows)
    ) + storm_markdown(result.get("storms", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/imgsearch-load"), help="library + store (kept)")
    parser.add_argument("--size", type=int, default=5000, help="images in the store before the load")
    parser.add_argument("--incoming", type=int, default=300, help="images copied in for the worker during the load")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--storm-clients", type=int, default=50, help="clients uploading 64-100 MP images at once")
    parser.add_argument("--storm-deadline", type=float, default=600, help="seconds a storm client keeps retrying")
    parser.add_argument(
        "--storm-backends", default="torch,default", help="a storm per backend (default: the server's own choice)"
    )
    parser.add_argument("--out", type=Path, help="write the figures here as JSON (and .md beside it)")
    args = parser.parse_args()

    import httpx

    lib, db = args.workdir / "library", args.workdir / "db"
    build_started = time.monotonic()
    build_library(lib, args.size)
    log(f"library: {args.size} derived images in {lib} ({time.monotonic() - build_started:.0f} s)")
    shutil.rmtree(lib / "incoming", ignore_errors=True)
    ingest = cli("ingest", lib, "--db", db, "--model", args.model, *CHEAP, "--prune", "--json")
    summary = json.loads(report.run_checked(ingest, "ingest"))
    build_file = args.workdir / "build.json"
    if summary["embedded"] or not build_file.exists():  # keep the figures of the run that embedded them
        images, features = summary["added"] + summary["unchanged"], f"{args.model}, {' '.join(CHEAP)}"
        figures = {k: summary[k] for k in ("seconds", "images_per_second")}
        build_file.write_text(json.dumps({"images": images, **figures, "features": features}))
    build = json.loads(build_file.read_text())
    log(f"store built: {build}")

    status = args.workdir / "worker-status.json"
    with ExitStack() as stack:  # stopped in reverse: web and worker first, as the worker stores its rows in chroma
        stack.callback(shutil.rmtree, lib / "incoming", ignore_errors=True)  # the next run starts from the same store
        logs = {
            name: stack.enter_context(open(args.workdir / f"{name}.log", "w")) for name in ("chroma", "worker", "web")
        }
        chroma, chroma_url = stack.enter_context(report.served(db, logs["chroma"]))
        store = ["--chroma-url", chroma_url]
        worker = report.spawn(
            cli("worker", lib, *store, "--interval", "1", "--settle", "1", "--status", status), logs["worker"]
        )
        stack.callback(stop, worker, 120)
        web, web_url = stack.enter_context(web_server([*store, "--status", status], logs["web"]))
        http = stack.enter_context(httpx.Client(base_url=web_url, timeout=60))
        procs = [chroma, worker, web]

        def count() -> int:
            return int(http.get("/api/stats").json()["count"])

        wait_until("the worker's first sync", lambda: json.loads(status.read_text())["last_sync"], 300, procs)
        before = count()
        # ids for by-id and thumbnails: the top results of the example queries
        queries = sorted(QUERIES.glob("*.png"))
        ids = []
        for q in queries[:10]:
            res = http.post("/api/search", files={"image": (q.name, q.read_bytes())}, data={"k": "10"})
            ids += [r["id"] for r in res.json()["results"]]
        incoming = build_library(lib / "incoming", args.incoming, first_variant=TRANSFORMS * 10)
        started = time.monotonic()
        watching, seen = threading.Event(), Counter[str]()
        watcher = threading.Thread(target=watch_worker, args=(status, watching, seen))
        watcher.start()
        records = run_clients(web_url, args, queries + incoming[:20], ids)
        wall = time.monotonic() - started
        watching.set()
        watcher.join()
        after = count()
        # then how long the worker takes to store all that was copied in (it writes in batches)
        wait_until("the worker to store the incoming images", lambda: count() >= before + args.incoming, 900, procs)
        stored_after = time.monotonic() - started
        backends = [b for b in args.storm_backends.split(",") if b]
        storms = [run_storm(args, store, status, backend, queries) for backend in backends]
    result = {
        "clients": args.clients,
        "worker_states_during_load": dict(seen),
        "incoming_stored_after_s": round(stored_after, 1),
        "entries_before": before,
        "entries_after": after,
        "incoming": args.incoming,
        "build": build,
        "load": summarise(records, wall),
        "storms": storms,
        "cpu_cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    print(markdown(result))
    if args.out:
        report.write_report(args.out, markdown(result) + "\n", result, indent=1)
    return 1 if result["load"]["5xx"] or result["load"]["failed"] or any(map(storm_failed, storms)) else 0


if __name__ == "__main__":
    sys.exit(main())
