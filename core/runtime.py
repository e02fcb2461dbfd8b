"""Where a backbone's conv trunk runs: eager torch (CPU, or CUDA with fp16 autocast) or ONNX Runtime.

Every runner maps one preprocessed float32 batch to the trunk's feature map; the embedder pools and
normalises it, so all backends share one pooling path and differ only in the trunk's arithmetic.

- ``auto`` (the default): ``torch`` on a GPU, else ``onnx`` (same vectors, 1.3-3x faster on CPUs).
- ``torch``: eager PyTorch, ``channels_last``; the reference (and the only one that uses a GPU).
- ``onnx``: the same fp32 network exported to ONNX and run by ONNX Runtime (equal to 1e-4).
- ``int8``: that ONNX model statically quantised: uint8 activations whose ranges come from fixed
  images in ``core/calibration`` (so it is the same on every machine), per-channel weights in
  7 bits (``reduce_range``: on AVX2 CPUs without VNNI, 8-bit weights overflow ONNX Runtime's 16-bit
  partial sums and vectors fell to cosine 0.90 of fp32), except the first :data:`WIDE_CONVS`
  convolutions, which keep 16-bit weights: their error flows through the whole network (with them
  at 8 bits EfficientNet-Lite0's vectors fell to cosine 0.97 of fp32 on some images; at 16 bits
  ≥ 0.98), and they are a few percent of its arithmetic.

The exported and quantised models are cached under :func:`cache_dir`, keyed by the weights digest; once
cached, :func:`cached_runner` runs one with neither torch nor onnx imported.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgsearch.core.config import DEFAULT_BACKEND, Recipe
from imgsearch.core.prepare import Views, load_views

if TYPE_CHECKING:
    import torch

BACKENDS = {
    "auto": "torch on a GPU, else onnx",
    "torch": "eager PyTorch fp32 (fp16 autocast on CUDA)",
    "onnx": "ONNX Runtime fp32",
    "int8": "ONNX Runtime int8 (static quantisation)",
}
DEVICES = ("auto", "cpu", "cuda")
EXPORT_VERSION = "4"  # bump when the export or quantisation recipe changes: old cache files are ignored
CALIBRATION = Path(__file__).with_name("calibration")
WIDE_CONVS = 4

# a batch → its feature map: a torch.Tensor from eager torch, a numpy array from ONNX Runtime (no torch)
Runner = Callable[[np.ndarray], "torch.Tensor | np.ndarray"]


class BackendUnavailable(Exception):
    """The backend or device cannot be used here; the message says why and what to do."""


def usable_cpus() -> int:
    """CPUs this process may run on (taskset, cgroups' cpusets), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Placement:
    """Where a model runs, as :func:`choose_backend` decided it."""

    backend: str  # torch, onnx or int8
    device: str  # cpu, cuda or cuda:N
    fallback: str | None  # the backend to run instead when ``backend`` cannot be built here; None: fail


def choose_backend(requested: str = DEFAULT_BACKEND, device: str = "auto") -> Placement:
    """Where a model runs: the backend asked for (:func:`imgsearch.core.config.resolve` picked it from the
    flag, the preset, the collection and the default) placed on a device. ``auto`` → torch on CUDA when
    torch sees a GPU, else onnx, with eager torch as the fallback when onnx cannot be built here (no onnx
    package, cache not writable). ``device`` ``auto`` → ``cuda`` for torch when torch sees a GPU, else
    ``cpu``; ``cuda`` is refused for the ONNX Runtime backends and when torch sees no GPU
    (:class:`BackendUnavailable`). torch is imported only to ask about a GPU, and not at all on a machine with
    no GPU driver (:func:`cuda_available`).
    """
    if requested not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {requested!r}; choose one of: {', '.join(BACKENDS)}")
    if device not in DEVICES and not device.startswith("cuda:"):
        raise BackendUnavailable(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    fallback = "torch" if requested == "auto" else None
    chosen = "torch" if requested == "auto" else requested  # auto: torch decides the device first
    if device == "auto":
        device = "cuda" if chosen == "torch" and cuda_available() else "cpu"
    elif device.startswith("cuda"):
        if chosen != "torch":
            raise BackendUnavailable(
                f"--backend {chosen} runs on the CPU only: use --device cpu, or --backend torch with --device {device}"
            )
        if not cuda_available():
            raise BackendUnavailable(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    if requested == "auto" and device == "cpu":
        chosen = "onnx"
    return Placement(chosen, device, fallback)


# what a GPU driver leaves on a Linux machine (NVIDIA's, or AMD's for ROCm builds of torch): with none of
# them torch cannot see a GPU, so it need not be imported (~2 s) to be asked
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, without importing torch where no GPU driver is installed (Linux)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(f) for f in GPU_DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def cache_dir() -> Path:
    """``$IMGSEARCH_CACHE``, else ``$XDG_CACHE_HOME/imgsearch``, else ``~/.cache/imgsearch``."""
    if env := os.environ.get("IMGSEARCH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgsearch"


def make_runner(trunk: Any, backend: str, device: str, recipe: Recipe) -> Runner:
    """A function from a (n, 3, s, s) float32 batch to the trunk's (n, C, h, w) float32 feature map (a
    torch.Tensor for ``torch``, a numpy array for the ONNX Runtime backends).

    ``backend`` and ``device`` are what :func:`choose_backend` placed (the user's input is checked there).
    """
    import torch

    if backend not in ("torch", "onnx", "int8"):
        raise ValueError(f"make_runner needs a resolved backend (torch, onnx or int8), not {backend!r}")
    if backend == "torch":
        trunk = trunk.to(device).to(memory_format=torch.channels_last)
        cuda = device.startswith("cuda")

        def run_torch(batch: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(batch).to(device, non_blocking=cuda)
            with torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
                return trunk(x.contiguous(memory_format=torch.channels_last)).float()

        return run_torch

    return cached_runner(backend, recipe) or _onnx_runner(
        _ort_session(_onnx_model(trunk, recipe, int8=backend == "int8"))
    )


def cached_runner(backend: str, recipe: Recipe) -> Runner | None:
    """The ONNX Runtime runner of the model file cached for ``recipe`` (``onnx`` or ``int8``), without
    torch or onnx; None when it is not cached yet, or is damaged (then it is deleted, to be built again)."""
    path = _model_path(recipe, int8=backend == "int8")
    if not path.is_file():
        return None
    try:
        return _onnx_runner(_ort_session(path))
    except Exception as err:  # a damaged cache file (ORT has its own exception types): build it again
        print(f"cannot load {path} ({err}); building it again", file=sys.stderr)
        path.unlink(missing_ok=True)
        return None


def _onnx_runner(ort_session: Any) -> Runner:
    def run_onnx(batch: np.ndarray) -> np.ndarray:
        return ort_session.run(None, {"x": batch})[0]

    return run_onnx


def _model_path(recipe: Recipe, int8: bool) -> Path:
    """Where the exported (fp32) or quantised (int8) model of these weights is cached."""
    stem = f"{recipe.model}-{recipe.weights_digest}-v{EXPORT_VERSION}"
    if not int8:
        return cache_dir() / f"{stem}.onnx"
    # the calibration views depend on the scales, so the int8 file does too
    return cache_dir() / f"{stem}-int8-{'+'.join(map(str, recipe.scales))}-{recipe.crop}.onnx"


def _onnx_model(trunk: Any, recipe: Recipe, int8: bool) -> Path:
    """The cached ONNX file for these weights, exported (and quantised) on first use."""
    try:
        import onnx  # noqa: F401 - needed by the exporter and the quantiser
    except ImportError:
        raise BackendUnavailable(
            "the onnx package is not installed (it exports the model for ONNX Runtime): pip install onnx"
        ) from None
    fp32 = _model_path(recipe, int8=False)
    if not fp32.is_file():
        print(f"exporting {recipe.model} to ONNX → {fp32} (once) ...", file=sys.stderr)
        _atomic(fp32, lambda tmp: _export(trunk, tmp))
    if not int8:
        return fp32
    q = _model_path(recipe, int8=True)
    if not q.is_file():
        print(f"quantising {recipe.model} to int8 → {q} (once) ...", file=sys.stderr)
        _atomic(q, lambda tmp: _quantise(fp32, tmp, recipe.views))
    return q


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file and rename, so a killed export never leaves a half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _export(trunk: Any, path: Path) -> None:
    import warnings

    import torch

    example = torch.zeros(1, 3, 224, 224)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            trunk.cpu().to(memory_format=torch.contiguous_format),
            (example,),
            str(path),
            input_names=["x"],
            output_names=["features"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "features": {0: "n", 2: "fh", 3: "fw"}},
            opset_version=17,
            dynamo=False,
        )


def calibration_batches(views: Views) -> list[np.ndarray]:
    """The fixed calibration images through the ONE preprocessing function, one batch per scale."""
    loaded = [load_views(p, views)[0] for p in sorted(CALIBRATION.glob("*.jpg"))]
    return [np.stack([v[i] for v in loaded]) for i in range(len(views.scales))]


def _quantise(fp32: Path, path: Path, views: Views) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = [{"x": one[None]} for batch in calibration_batches(views) for one in batch]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    # fold batch norms into the convolutions first (4x faster int8: the int8 kernels then fuse)
    prepared = path.with_name(path.name + ".prepared")
    logging.disable(logging.WARNING)  # the quantiser's notes and advice
    try:
        quant_pre_process(str(fp32), str(prepared))
        convs = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        wide = {n.input[1]: [{"quant_type": QuantType.QInt16, "axis": 0}] for n in convs[:WIDE_CONVS]}
        quantize_static(
            str(prepared),
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: on CPUs without VNNI (AVX2 only) ONNX Runtime's u8s8 kernels add pairs of
            # products in 16 bits, which 8-bit weights can overflow (cosine to fp32 fell to 0.90 there)
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"TensorQuantOverrides": wide},
        )
    finally:
        logging.disable(logging.NOTSET)
        prepared.unlink(missing_ok=True)


def _ort_session(path: Path) -> Any:
    """An ONNX Runtime InferenceSession for the model file, on this process's CPUs."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: its graph-cleanup notes would flood the terminal
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = usable_cpus()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
