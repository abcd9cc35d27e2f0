"""Video and image loading with decord, and frame/size sampling as qwen-vl-utils does it for the Qwen-VL models.

Sizes are rounded to multiples of the family's patch x spatial merge (28 for Qwen2.5-VL, 32 for Qwen3-VL) and kept
within a per-frame pixel budget;
frame counts are even (temporal patch 2). Paper defaults (VideoP2R, Sec. 4): 16 frames at 128x28x28 pixels for
training, 32 frames at 256x28x28 for evaluation.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PIXEL_FACTOR = 28  # Qwen2.5-VL's patch_size (14) * spatial_merge_size (2); Qwen3-VL's is 32 (videoqa.families)
FRAME_FACTOR = 2  # temporal_patch_size
MAX_RATIO = 200


class MediaError(RuntimeError):
    """A video or image that cannot be used; the message names the file, the reason and the fix."""


@dataclass(frozen=True)
class FrameSampling:
    """How to turn a video into frames (qwen-vl-utils' keys). ``nframes`` wins over ``fps`` when set."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    nframes: int | None = None
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    factor: int = PIXEL_FACTOR  # frame sides are multiples of this: the model family's patch x merge


TRAIN_SAMPLING = FrameSampling(max_frames=16, max_pixels=128 * 28 * 28)
EVAL_SAMPLING = FrameSampling(max_frames=32, max_pixels=256 * 28 * 28)


@dataclass
class VideoClip:
    """Sampled frames (T, H, W, 3 uint8 RGB) and where they came from."""

    frames: np.ndarray
    indices: list[int]
    native_fps: float
    total_frames: int

    @property
    def sample_fps(self) -> float:
        """Frames per second of the sampled clip (what Qwen2.5-VL's temporal M-RoPE positions are based on)."""
        duration = self.total_frames / self.native_fps
        return len(self.indices) / duration if duration > 0 else self.native_fps

    def metadata(self) -> dict:
        """Metadata for the transformers processor, describing the clip as already sampled.

        The learner (this) and the rollout workers (``vllm_metadata``) describe the clip identically, so that
        Qwen2.5-VL's temporal M-RoPE positions, which depend on fps, agree between them.
        """
        t = len(self.indices)
        fps = self.sample_fps
        return {
            "fps": fps,
            "total_num_frames": t,
            "duration": t / fps,
            "frames_indices": list(range(t)),
            "video_backend": "decord",
            "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]),
        }

    def vllm_metadata(self) -> dict:
        """The same for vLLM, which also needs to be told not to sample frames again."""
        return {**self.metadata(), "do_sample_frames": False}


def round_by(x: float, f: int) -> int:
    return round(x / f) * f


def ceil_by(x: float, f: int) -> int:
    return math.ceil(x / f) * f


def floor_by(x: float, f: int) -> int:
    return math.floor(x / f) * f


def smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = PIXEL_FACTOR
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if min(height, width) <= 0:
        raise ValueError(f"bad frame size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio of {height}x{width} exceeds {MAX_RATIO}")
    h = max(factor, round_by(height, factor))
    w = max(factor, round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, floor_by(height / beta, factor))
        w = max(factor, floor_by(width / beta, factor))
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = ceil_by(height * beta, factor)
        w = ceil_by(width * beta, factor)
    return h, w


def frame_indices(total_frames: int, native_fps: float, s: FrameSampling) -> list[int]:
    """Evenly spaced frame indices, as qwen-vl-utils' ``smart_nframes`` chooses their number."""
    if total_frames < FRAME_FACTOR:
        raise ValueError(f"video has {total_frames} frame(s); at least {FRAME_FACTOR} are needed")
    if s.nframes is not None:
        n = round_by(s.nframes, FRAME_FACTOR)
    else:
        lo = ceil_by(s.min_frames, FRAME_FACTOR)
        hi = floor_by(min(s.max_frames, total_frames), FRAME_FACTOR)
        n = total_frames / native_fps * s.fps
        n = floor_by(min(max(n, lo), hi, total_frames), FRAME_FACTOR)
    n = max(FRAME_FACTOR, min(n, floor_by(total_frames, FRAME_FACTOR)))
    return np.linspace(0, total_frames - 1, n).round().astype(int).tolist()


def _resize(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    if frames.shape[1:3] == (h, w):
        return frames
    import cv2

    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


# Opening a video runs FFmpeg's decoder set-up, whose first use in a process initialises shared static tables;
# the FFmpeg that decord bundles does not guard that, and two loader threads opening their first videos at once
# once aborted the process (SIGABRT, "Assertion ... failed at libavcodec/bitstream.c"). Opening is serialised;
# decoding (get_batch) still runs in parallel.
_OPEN_LOCK = threading.Lock()


def load_video(path: str | Path, sampling: FrameSampling = TRAIN_SAMPLING, num_threads: int = 1) -> VideoClip:
    """Decode and sample a video with decord; ``MediaError`` naming the file if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video not found: {path} (check the row's 'path' and the dataset root)")
    import decord

    try:
        with _OPEN_LOCK:
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
        total = len(vr)
        fps = float(vr.get_avg_fps()) or 1.0
        idx = frame_indices(total, fps, sampling)
        frames = vr.get_batch(idx).asnumpy()
    except ValueError as e:  # too few frames: decodable, but no clip can be sampled
        raise MediaError(f"unusable video {path}: {e} (drop the row)") from None
    except (RuntimeError, decord.DECORDError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MediaError(
            f"cannot decode video {path}: {first} (re-encode it, e.g. with ffmpeg, or drop the row)"
        ) from None
    h, w = _target_size(
        frames.shape[1], frames.shape[2], sampling.min_pixels, sampling.max_pixels, path, "video", sampling.factor
    )
    return VideoClip(frames=_resize(frames, h, w), indices=idx, native_fps=fps, total_frames=total)


def load_image(
    path: str | Path, min_pixels: int = 4 * 28 * 28, max_pixels: int = 256 * 28 * 28, factor: int = PIXEL_FACTOR
) -> np.ndarray:
    """An RGB image (H, W, 3 uint8) resized to multiples of ``factor`` within the pixel budget."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"image not found: {path} (check the row's 'path' and the dataset root)")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError as e:  # PIL's bound (about 179M pixels): decoding it could exhaust memory
        raise MediaError(f"image {path} is too large to decode safely ({e}); resize it or drop the row") from None
    except (UnidentifiedImageError, OSError) as e:
        raise MediaError(f"cannot decode image {path}: {e} (re-save it as PNG/JPEG or drop the row)") from None
    h, w = _target_size(arr.shape[0], arr.shape[1], min_pixels, max_pixels, path, "image", factor)
    return _resize(arr[None], h, w)[0]


def _target_size(
    height: int, width: int, min_pixels: int, max_pixels: int, path: Path, kind: str, factor: int = PIXEL_FACTOR
) -> tuple[int, int]:
    """smart_resize, with a frame shape it refuses (aspect ratio over MAX_RATIO, an empty frame) as a MediaError:
    the loader skips and counts it like a corrupt file instead of crashing."""
    try:
        return smart_resize(height, width, min_pixels, max_pixels, factor)
    except ValueError as e:
        raise MediaError(f"unusable {kind} {path}: {e} (crop or pad it, or drop the row)") from None
