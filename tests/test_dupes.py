"""`imgsearch dupes`: exact duplicates by hash, edited copies verified by their pixels, groups that never
chain two pictures together; on the embedded store and a Chroma server; the JSON contract."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MODEL, REPO, copy_library, run_json
from PIL import Image

from imgsearch.dupes.find import _locality_order, _stars, find_duplicates
from imgsearch.dupes.groups import Duplicates, Member
from imgsearch.dupes.verify import Verdict

HOLIDAYS = REPO.parent / "shared" / "datasets" / "holidays-dev" / "library"


def _member(id_: str, pixels: int = 100, mtime: float = 0.0) -> Member:
    return Member(id_, f"/p/{id_}.jpg", 1.0, 1000, pixels, 1, mtime)


def test_groups_are_stars_never_chains() -> None:
    """A~B and B~C without A~C: A and C never share a group (B's partners are A and C: it is the centre)."""
    files = {i: _member(i) for i in "ABCDE"}
    pairs = {("A", "B"): 0.9, ("B", "C"): 0.9, ("D", "E"): 0.95}
    groups = _stars(pairs, files, "copies")
    together = [{m.id for m in g.members} for g in groups]
    assert {"A", "B", "C"} in together and {"D", "E"} in together  # B is the centre, both partners of it
    pairs = {("A", "B"): 0.9, ("B", "C"): 0.9, ("C", "D"): 0.9}  # a chain: B (first by degree) takes A and C
    groups = _stars(pairs, {i: _member(i) for i in "ABCD"}, "copies")
    assert [sorted(m.id for m in g.members) for g in groups] == [["A", "B", "C"]]  # D's only partner is taken
    asked: list[tuple[str, str]] = []

    def joiner(answer: float | None) -> Callable[[list[tuple[str, str]]], list[float | None]]:
        def join(pairs: list[tuple[str, str]]) -> list[float | None]:  # D is compared with its partner's centre
            asked.extend(pairs)
            return [answer] * len(pairs)

        return join

    for answer, members in ((None, ["A", "B", "C"]), (0.8, ["A", "B", "C", "D"])):
        groups = _stars(pairs, {i: _member(i) for i in "ABCD"}, "copies", joiner(answer))
        assert [sorted(m.id for m in g.members) for g in groups] == [members] and asked.pop() == ("D", "B")


def test_keep_is_most_pixels_then_oldest() -> None:
    files = {"a": _member("a", 100, 5.0), "b": _member("b", 400, 9.0), "c": _member("c", 400, 1.0)}
    (group,) = _stars({("a", "b"): 0.9, ("a", "c"): 0.9}, files, "copies")
    assert group.keep.id == "c" and group.members[0].id == "c"


def test_pairs_are_compared_file_by_file() -> None:
    """Every candidate pair once, each file's pairs close together: two separate clusters are never
    interleaved, so a file's prepared form is still cached when its next pair comes."""
    import numpy as np

    rng = random.Random(3)
    files = list(range(40))
    rng.shuffle(files)
    clusters = [files[:20], files[20:]]  # rows numbered in scan order: the clusters' files are spread
    pairs = np.array([sorted(rng.sample(c, 2)) for c in clusters for _ in range(30)], dtype=np.int32)
    pairs = np.unique(pairs, axis=0)
    order = _locality_order(pairs, 40)
    assert sorted(order.tolist()) == list(range(len(pairs)))
    cluster_of = [0 if int(a) in clusters[0] else 1 for a, _ in pairs[order]]
    assert sum(x != y for x, y in itertools.pairwise(cluster_of)) == 1  # one cluster, then the other


def test_the_cache_keeps_the_files_needed_soonest() -> None:
    """Told when each file is needed next, the verifier drops the one needed furthest ahead: in pairs (A, B),
    (B, C), (A, C) with room for two files it drops B, which is done, where dropping the least recently used
    (A) would prepare A twice. ``_next_uses`` gives those hints from an order of pairs."""
    import numpy as np

    from imgsearch.dupes.find import _next_uses
    from imgsearch.dupes.verify import Verifier

    ordered = np.array([[0, 1], [1, 2], [0, 2]])
    assert _next_uses(ordered).tolist() == [[2, 1], [3, 2], [3, 3]]
    a, b, c = (str(p) for p in sorted((REPO / "examples" / "library").rglob("*.jpg"))[:3])
    sizes = [Verifier()._prepared(x).nbytes for x in (a, b, c)]  # type: ignore[union-attr]
    room = max(x + y for x, y in itertools.combinations(sizes, 2))  # any two files fit, never three
    for hints, prepared in ((True, 3), (False, 4)):
        verifier = Verifier(cache_bytes=room)
        for (x, y), after in zip(((a, b), (b, c), (a, c)), _next_uses(ordered).tolist(), strict=True):
            verifier.same_picture(x, y, next_use=tuple(after) if hints else None)
        assert verifier.prepared == prepared, hints


def _plant(lib: Path) -> tuple[Path, Path, Path]:
    """An exact duplicate (a byte copy) and an edited copy (half size, JPEG) of two library images."""
    first, second = sorted(lib.rglob("*.jpg"))[:2]
    twin = first.with_name("twin.jpg")
    shutil.copyfile(first, twin)
    os.utime(twin, (first.stat().st_mtime + 100,) * 2)  # younger: the original is the keep
    small = second.with_name("small.jpg")
    with Image.open(second) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(small, quality=80)
    return first, twin, small


def test_cli_json_contract_on_both_stores(tmp_path: Path, store_args: list[str]) -> None:
    lib = copy_library(tmp_path / "lib", categories=3, per_category=6)
    first, twin, small = _plant(lib)
    run_json("ingest", lib, *store_args, "--model", MODEL)
    (out,) = run_json("dupes", *store_args)
    assert set(out) == {"level", "threshold", "groups", "redundant", "stats"}
    assert out["level"] == "copies" and isinstance(out["threshold"], float)
    kinds = {g["kind"]: g for g in out["groups"]}
    exact = kinds["exact"]
    assert {m["path"] for m in exact["members"]} == {str(first), str(twin)}
    assert exact["keep"] == exact["members"][0]["id"] and exact["members"][0]["path"] == str(first)
    copies = [g for g in out["groups"] if g["kind"] == "copies"]
    assert any(str(small) in {m["path"] for m in g["members"]} for g in copies)
    for g in out["groups"]:
        assert [m["keep"] for m in g["members"]] == [True] + [False] * (len(g["members"]) - 1)
        for m in g["members"]:
            assert set(m) == {"id", "path", "score", "size", "width", "height", "keep"}
            assert isinstance(m["score"], float) and m["width"] > 0 and m["size"] > 0
        for p in g["pairs"]:
            assert set(p) == {"a", "b", "score", "verified"} and p["a"] < p["b"]
    assert out["redundant"] == sum(len(g["members"]) - 1 for g in out["groups"])
    (only_exact,) = run_json("dupes", *store_args, "--level", "exact")
    assert [g["kind"] for g in only_exact["groups"]] == ["exact"]
    other = sorted(p.name for p in lib.iterdir())[-1]
    (elsewhere,) = run_json("dupes", *store_args, "--where", f"category={other}")
    assert elsewhere["groups"] == []  # the planted files are in the first category


@pytest.fixture(scope="module")
def holidays_found(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Duplicates]:
    """Holidays photos (several shots of each scene: the hard negatives) with 10 edited copies of 20 of
    them and 5 byte duplicates, ingested for real, and what `copies` finds in them."""
    if not HOLIDAYS.is_dir():
        pytest.skip(f"the photo sets are not at {HOLIDAYS.parent.parent}")
    sys.path.insert(0, str(REPO))
    from bench.dupes import build_library
    from imgsearch.core.config import ModelChoice
    from imgsearch.core.session import open_embedder
    from imgsearch.core.store import Location, Store
    from imgsearch.ingest.sync import ingest

    tmp_path = tmp_path_factory.mktemp("holidays")
    origin = build_library(tmp_path, 20, 5, seed=1, sets={"holidays": HOLIDAYS})
    store = Store(Location(db=tmp_path / "db"))
    ingest([str(tmp_path / "lib")], store, open_embedder(store, ModelChoice(model=MODEL)))
    found = find_duplicates(store)
    store.close()
    return origin, found


def test_planted_copies_among_photos_of_one_scene(holidays_found: tuple[dict[str, str], Duplicates]) -> None:
    """Copies are found (recall >= 0.9 of the planted pairs), and pairs inside groups are one picture
    (precision >= 0.98), exact duplicates all grouped."""
    origin, found = holidays_found
    together = {(a.path, b.path) for g in found.groups for a in g.members for b in g.members}
    copies = [(p, o) for p, o in origin.items() if "__copy" in p]
    recall = sum((p, o) in together for p, o in copies) / len(copies)
    assert recall >= 0.9, recall
    assert all((p, o) in together for p, o in origin.items() if "__dup" in p)
    assert sum(g.kind == "exact" for g in found.groups) >= 5
    inside = [(a.path, b.path) for g in found.groups for i, a in enumerate(g.members) for b in g.members[i + 1 :]]
    precision = sum(origin[a] == origin[b] for a, b in inside) / len(inside)
    assert precision >= 0.98, precision


def test_no_group_joins_two_different_photos(holidays_found: tuple[dict[str, str], Duplicates]) -> None:
    origin, found = holidays_found
    mixed = [[m.path for m in g.members] for g in found.groups if len({origin[m.path] for m in g.members}) > 1]
    assert mixed == []


def test_a_closer_exposure_is_not_an_edit(tmp_path: Path) -> None:
    """A second shot zoomed in from the same spot aligns like a crop and agrees block by block, but holds
    finer detail than the wide shot can give: two exposures. A crop enlarged back to size, or a smaller copy
    inside a border, holds none: those stay copies (never turned down as a closer exposure), and the
    smaller copies are found (compared at their own, coarser resolution)."""
    from imgsearch.dupes.verify import Verifier

    if not HOLIDAYS.is_dir():
        pytest.skip(f"the photo sets are not at {HOLIDAYS.parent.parent}")
    sys.path.insert(0, str(REPO / "bench"))
    from zoom import kinds  # the pairs bench/zoom.py calibrates on

    verifier = Verifier()
    wide, close = HOLIDAYS / "1124" / "112403.jpg", HOLIDAYS / "1124" / "112404.jpg"  # a zoomed second shot
    for a, b in ((wide, close), (close, wide)):
        assert verifier.same_picture(str(a), str(b)).how.startswith("a closer exposure")
    photos = sorted(p for p in HOLIDAYS.rglob("*.jpg") if p.parent.name != "1124")[::20]
    framed = ["smaller copy letterboxed", "smaller copy in a screenshot border", "smaller copy under a caption bar"]
    verdicts: dict[str, list[Verdict]] = {"two framings (a zoomed exposure)": [], "enlarged crop, q75": []}
    verdicts |= {name: [] for name in framed}
    for n, photo in enumerate(photos):
        with Image.open(photo) as im:
            image = im.convert("RGB")
        for k, (name, (_, make)) in enumerate(kinds().items()):
            if name in verdicts:
                first, q1, second, q2 = make(image, random.Random(f"{photo}:{name}"))
                a, b = tmp_path / f"{n}-{k}-a.jpg", tmp_path / f"{n}-{k}-b.jpg"
                first.convert("RGB").save(a, quality=q1)
                second.convert("RGB").save(b, quality=q2)
                verdicts[name].append(verifier.same_picture(str(a), str(b)))
    turned_down = {name: sum(v.how.startswith("a closer exposure") for v in got) for name, got in verdicts.items()}
    assert len(photos) >= 10 and turned_down.pop("two framings (a zoomed exposure)") >= len(photos) // 2, turned_down
    assert not any(turned_down.values()), turned_down
    found = sum(v.same for name in framed for v in verdicts[name]) / (len(framed) * len(photos))
    assert found >= 0.85, found


def test_product_shots_on_a_plain_ground_are_not_copies(tmp_path: Path) -> None:
    """Studio shots of different motorbikes, posed alike on white, align and agree on most blocks (the
    white ones); counted over the blocks with texture they disagree. Their edited copies still agree."""
    from imgsearch.dupes.verify import Verifier
    from imgsearch.evaluation.edits import TRANSFORMS

    bikes = REPO.parent / "shared" / "datasets" / "caltech101-dev" / "Motorbikes"
    if not bikes.is_dir():
        pytest.skip(f"the photo sets are not at {bikes.parent.parent}")
    verifier = Verifier()
    shots = [bikes / f"image_{n:04d}.jpg" for n in (1, 2, 5, 9)]  # four bikes in one pose (two models)
    for i, a in enumerate(shots):
        for b in shots[i + 1 :]:
            verdict = verifier.same_picture(str(a), str(b))
            assert not verdict.same, (a.name, b.name, verdict)
    for a in shots:
        with Image.open(a) as im:
            image = im.convert("RGB")
        for name in ("crop 50-90%", "caption", "brightness/contrast", "rotate ±10°"):
            transform, quality = TRANSFORMS[name]
            copy = tmp_path / f"{a.stem}-{name[:4]}.jpg"
            transform(image, random.Random(f"{a.name}:{name}")).convert("RGB").save(copy, quality=quality)
            assert verifier.same_picture(str(a), str(copy)).same, (a.name, name)


def _with_capture_time(src: Path, dest: Path, when: str | None, sub: str = "", scale: float = 1.0) -> Path:
    """``src``'s pixels (resized by ``scale``) saved as a JPEG whose EXIF says it was taken at ``when``."""
    with Image.open(src) as im:
        image = im.convert("RGB")
    if scale != 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    exif = Image.Exif()
    if when is not None:
        exif.get_ifd(0x8769).update({0x9003: when, **({0x9291: sub} if sub else {})})
    image.save(dest, quality=92, exif=exif)
    return dest


def test_capture_times_tell_shots_from_copies(tmp_path: Path) -> None:
    """Two files that both say when they were taken, at different moments, are two shots (a burst) even
    when their pixels agree; a copy keeps the time (or has none) and is still found by its pixels."""
    from imgsearch.core.decode import capture_time
    from imgsearch.dupes.verify import Verifier

    src = sorted((REPO / "examples" / "library").rglob("*.jpg"))[0]
    shot = _with_capture_time(src, tmp_path / "shot.jpg", "2024:07:01 10:00:00", "120")
    burst = _with_capture_time(src, tmp_path / "burst.jpg", "2024:07:01 10:00:00", "380")
    later = _with_capture_time(src, tmp_path / "later.jpg", "2024:07:01 10:00:01")
    copy = _with_capture_time(src, tmp_path / "copy.jpg", "2024:07:01 10:00:00", scale=0.5)  # an edit dropped SubSec
    stripped = _with_capture_time(src, tmp_path / "stripped.jpg", None, scale=0.5)
    assert capture_time(shot) == ("2024:07:01 10:00:00", "120") and capture_time(stripped) is None
    verifier = Verifier()
    for other in (burst, later):
        verdict = verifier.same_picture(str(shot), str(other))
        assert not verdict.same and "EXIF" in verdict.how
    for other in (copy, stripped):
        assert verifier.same_picture(str(shot), str(other)).same


def test_the_verifiers_shortcuts_change_no_answer(tmp_path: Path) -> None:
    """The shortcuts that make a pair cheap give the answers of the work they skip: faiss' matches are
    OpenCV's brute-force matches, a fit through the probe is exactly the full fit (same transform, same
    inliers), the nest bound is never below the nest the warp measures, and the blocks compared all at once
    agree with a block-by-block loop."""
    import cv2
    import numpy as np

    from imgsearch.dupes import align, verify
    from imgsearch.evaluation.edits import TRANSFORMS

    photos = sorted((REPO / "examples" / "library").rglob("*.jpg"))[::60][:6]
    verifier = verify.Verifier()
    fitted = 0
    for n, src in enumerate(photos):
        with Image.open(src) as im:
            image = im.convert("RGB")
        for name in ("crop 50-90%", "rotate ±10°", "flip"):
            transform, quality = TRANSFORMS[name]
            copy = tmp_path / f"{n}-{name[:4]}.jpg"
            transform(image, random.Random(f"{src.name}:{name}")).convert("RGB").save(copy, quality=quality)
            a, b = verifier._prepared(str(src)), verifier._prepared(str(copy))
            assert not isinstance(a, str) and not isinstance(b, str)
            for m in (0, 1):
                knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(b.descriptors[m], a.descriptors[0], k=2)
                ratio = [(x.queryIdx, x.trainIdx) for x, y in knn if x.distance < 0.8 * y.distance]
                assert list(zip(*align.good_matches(b.descriptors[m], a.descriptors[0]), strict=True)) == ratio
                full = align.fit(a.keypoints[0], a.descriptors[0], b.keypoints[m], b.descriptors[m], 3.0, 15)
                probed = verify._probed_fit(a.keypoints[0], a.descriptors[0], b.keypoints[m], b.descriptors[m])
                if probed[0] is not None:
                    fitted += 1
                    assert probed[1] == full[1] and np.array_equal(probed[0], full[0]), (src.name, name, m)
                else:  # turned down by the probe: only where the full fit is weak (an edit's is strong)
                    assert full[1] < 3 * verify.MIN_INLIERS, (src.name, name, m, full[1])
    assert fitted >= len(photos) * 2  # crops and rotations as they are, flips mirrored

    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w, hb, wb = (int(x) for x in rng.integers(60, 481, 4))
        scale, angle = np.exp(rng.uniform(-2.3, 1.4)), rng.uniform(-np.pi, np.pi)
        move = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0]]) * [[scale], [scale]]
        move[:, 2] = rng.uniform(-0.5, 1.0, 2) * (w, h)
        inside = cv2.warpAffine(np.full((hb, wb), 255, np.uint8), move, (w, h), flags=cv2.INTER_NEAREST)
        nest = min(1.0, np.count_nonzero(inside) / min(hb * wb * scale * scale, h * w))
        assert verify._nest_bound(move, (hb, wb), (h, w)) >= nest

    def looped(x: np.ndarray, y: np.ndarray, inside: np.ndarray) -> tuple[float, float]:  # the loop it replaced
        bh, bw = max(1, x.shape[0] // verify.BLOCK_GRID), max(1, x.shape[1] // verify.BLOCK_GRID)
        scores, flat = [], 0
        for r in range(0, x.shape[0] - bh + 1, bh):
            for c in range(0, x.shape[1] - bw + 1, bw):
                if inside[r : r + bh, c : c + bw].min() == 0:
                    continue
                pa, pb = (z[r : r + bh, c : c + bw].astype(np.float32) for z in (x, y))
                if pa.std() < verify.FLAT and pb.std() < verify.FLAT:
                    flat += 1
                    continue
                pa, pb = pa - pa.mean(), pb - pb.mean()
                norm = float(np.linalg.norm(pa) * np.linalg.norm(pb))
                scores.append(float((pa * pb).sum()) / norm if norm > 0 else 0.0)
        if not scores:
            return (1.0, 1.0) if flat else (0.0, 0.0)
        return float(np.median(scores + [1.0] * flat)), float(np.median(scores))

    for _ in range(60):
        h, w = (int(x) for x in rng.integers(8, 481, 2))
        x = rng.integers(0, 256, (h, w)).astype(np.uint8)
        x[: int(rng.integers(0, h))] = 90  # flat blocks too
        y = np.clip(x + rng.normal(0, rng.uniform(0, 60), (h, w)), 0, 255).astype(np.uint8)
        inside = np.full((h, w), 255, np.uint8)
        inside[: int(rng.integers(0, h // 2 + 1))] = 0
        assert np.allclose(verify._block_agreement(x, y, inside), looped(x, y, inside), atol=1e-5)
