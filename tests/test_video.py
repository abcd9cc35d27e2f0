import shutil
from pathlib import Path

import numpy as np
import pytest

from videoqa.loader import MediaLoader
from videoqa.schema import load_samples
from videoqa.video import (
    EVAL_SAMPLING,
    TRAIN_SAMPLING,
    FrameSampling,
    MediaError,
    frame_indices,
    load_image,
    load_video,
    smart_resize,
)


def test_smart_resize_by_hand():
    assert smart_resize(112, 112, 3136, 100352) == (112, 112)  # already a multiple of 28, within budget
    assert smart_resize(112, 112, 784, 3136) == (56, 56)  # shrunk to the budget
    assert smart_resize(720, 1280, 3136, 128 * 28 * 28) == (224, 420)  # paper training budget, aspect kept
    assert smart_resize(20, 20, 3136, 100352) == (56, 56)  # grown to the minimum
    h, w = smart_resize(1080, 1920, 3136, 256 * 28 * 28)
    assert h % 28 == w % 28 == 0 and h * w <= 256 * 28 * 28
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000, 3136, 100352)


def test_frame_indices_like_qwen_vl_utils():
    # 16 frames at 8 fps = 2 s; fps 2 -> 4 frames, evenly spaced, ends included
    assert frame_indices(16, 8.0, FrameSampling(fps=2.0)) == [0, 5, 10, 15]
    assert frame_indices(16, 8.0, FrameSampling(nframes=8)) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert frame_indices(16, 8.0, FrameSampling(nframes=7)) == frame_indices(16, 8.0, FrameSampling(nframes=8))
    # a long video is capped at max_frames (paper: 16 for training, 32 for evaluation)
    assert len(frame_indices(3000, 30.0, TRAIN_SAMPLING)) == 16
    assert len(frame_indices(3000, 30.0, EVAL_SAMPLING)) == 32
    # a short video gets at least min_frames, but never more than it has
    assert len(frame_indices(6, 30.0, FrameSampling(min_frames=4))) == 4
    assert len(frame_indices(3, 30.0, FrameSampling(nframes=16))) == 2
    with pytest.raises(ValueError, match="at least 2"):
        frame_indices(1, 30.0, FrameSampling())


def test_load_real_video(synthetic_dir):
    clip = load_video(synthetic_dir / "videos" / "train-00000.mp4", FrameSampling(nframes=8, max_pixels=3136))
    assert clip.frames.shape == (8, 56, 56, 3) and clip.frames.dtype == np.uint8
    assert clip.total_frames == 16 and abs(clip.native_fps - 8.0) < 0.01
    assert clip.frames.mean() > 20  # decoded pixels, not zeros
    meta = clip.metadata()
    assert meta["total_num_frames"] == 8 and meta["frames_indices"] == list(range(8))
    assert abs(meta["fps"] - 4.0) < 1e-6 and abs(meta["duration"] - 2.0) < 1e-6
    assert (meta["height"], meta["width"]) == (56, 56)
    assert clip.vllm_metadata() == {**meta, "do_sample_frames": False}


def test_missing_and_corrupt_video_errors(tmp_path, synthetic_dir):
    with pytest.raises(MediaError, match=r"video not found: .*nope.mp4 \(check the row's 'path'"):
        load_video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    with pytest.raises(MediaError, match=r"cannot decode video .*bad.mp4: .*re-encode") as e:
        load_video(bad)
    assert "\n" not in str(e.value)
    truncated = tmp_path / "truncated.mp4"
    data = (synthetic_dir / "videos" / "train-00000.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="cannot decode video"):
        load_video(truncated)


def test_images_load_and_fail_clearly(tmp_path, synthetic_dir):
    images = sorted((synthetic_dir / "images").glob("*.png"))
    assert images, "the synthetic task writes some image rows"
    img = load_image(images[0], max_pixels=3136)
    assert img.shape == (56, 56, 3)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(MediaError, match="cannot decode image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(MediaError, match="image not found"):
        load_image(tmp_path / "y.png")


def test_a_decompression_bomb_is_a_skipped_row_not_a_dead_run(tmp_path, synthetic_dir, monkeypatch):
    """PIL refuses an image above twice its pixel bound with DecompressionBombError, which is no OSError: uncaught,
    it ended the loader (and the run). Here the bound is lowered so that a synthetic 56x56 image trips it: the row
    becomes a MediaError naming the file (a skipped, counted row in a run)."""
    from PIL import Image

    image = sorted((synthetic_dir / "images").glob("*.png"))[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 56 * 56 // 3)
    with pytest.raises(MediaError, match=f"image {image} is too large to decode safely"):
        load_image(image, max_pixels=3136)


def test_loader_keeps_order_and_counts_skips(tmp_path, synthetic_dir):
    root = tmp_path / "data"
    shutil.copytree(synthetic_dir, root)
    samples = load_samples(root / "train.json")[:12]
    (root / samples[3].path).unlink()  # missing
    (root / samples[7].path).write_bytes(b"corrupt")  # corrupt
    loader = MediaLoader(root, FrameSampling(nframes=4, max_pixels=3136), workers=2)
    got = list(loader(samples))
    expect = [s.problem_id for i, s in enumerate(samples) if i not in (3, 7)]
    assert [g.sample.problem_id for g in got] == expect
    assert dict(loader.skipped) == {"missing": 1, "corrupt": 1}
    assert any(samples[7].path.lstrip("./") in e for e in loader.errors)
    for g in got:
        assert (g.video is not None) == (g.sample.data_type == "video")
    strict = MediaLoader(root, FrameSampling(nframes=4, max_pixels=3136), on_error="raise")
    with pytest.raises(MediaError):
        list(strict(samples))


def test_media_outside_the_dataset_folder_is_skipped_unless_its_folder_is_a_media_root(tmp_path, synthetic_dir):
    """A row naming a real video by absolute path elsewhere, one climbing out with ``..``, and one reaching it through
    a link its folder's owner made: the first two are skipped as "outside" (a dataset's rows do not choose what
    files a run reads), the link is followed (judged on the path as written); with the other folder in
    ``media_roots`` all load. Catches a check that is missing, follows symlinks (a hub snapshot's files are links
    into its blobs), or compares strings so that /data2 passes as inside /data."""
    from dataclasses import replace

    root, other = tmp_path / "data", tmp_path / "data2"
    shutil.copytree(synthetic_dir, root)
    shutil.copytree(synthetic_dir / "videos", other / "videos")
    s = load_samples(root / "train.json")[0]
    (root / "linked").symlink_to(other / "videos")
    name = Path(s.path).name
    rows = [
        replace(s, problem_id="abs", path=str(other / "videos" / name)),
        replace(s, problem_id="up", path=f"../data2/videos/{name}"),
        replace(s, problem_id="link", path=f"linked/{name}"),
        s,
    ]
    sampling = FrameSampling(nframes=4, max_pixels=3136)
    loader = MediaLoader(root, sampling, workers=0)
    assert [g.sample.problem_id for g in loader(rows)] == ["link", s.problem_id]
    assert dict(loader.skipped) == {"outside": 2} and "data.media_roots" in loader.errors[0]
    allowed = MediaLoader(root, sampling, workers=0, media_roots=[other])
    assert [g.sample.problem_id for g in allowed(rows)] == ["abs", "up", "link", s.problem_id]
    with pytest.raises(MediaError, match="outside"):
        list(MediaLoader(root, sampling, on_error="raise")(rows))


def _write(path, frames: int, height: int, width: int) -> None:
    import cv2

    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (width, height))
    for i in range(frames):
        w.write(np.full((height, width, 3), 40 * i % 255, np.uint8))
    w.release()


def test_videos_the_loader_cannot_use_are_skipped_and_flagged(tmp_path, synthetic_dir):
    """A one-frame video and a 2x600 strip decode fine but cannot be sampled or resized: MediaError (skipped and
    counted by the loader, reported by validate-data), never a ValueError that crashes the loader."""
    from videoqa.validate import probe_media

    root = tmp_path / "data"
    shutil.copytree(synthetic_dir, root)
    samples = [s for s in load_samples(root / "train.json") if s.data_type == "video"][:4]
    _write(root / samples[1].path, frames=1, height=56, width=56)
    _write(root / samples[2].path, frames=4, height=2, width=600)
    from PIL import Image

    Image.new("RGB", (600, 2)).save(tmp_path / "strip.png")
    for path, why in ((root / samples[1].path, "1 frame"), (root / samples[2].path, "aspect ratio")):
        with pytest.raises(MediaError, match=f"unusable video .*{why}"):
            load_video(path, FrameSampling(nframes=4, max_pixels=3136))
        assert why in probe_media(path, "video")
    with pytest.raises(MediaError, match="unusable image .*aspect ratio"):
        load_image(tmp_path / "strip.png")
    assert "aspect ratio" in probe_media(tmp_path / "strip.png", "image")
    assert probe_media(root / samples[0].path, "video") is None
    loader = MediaLoader(root, FrameSampling(nframes=4, max_pixels=3136), workers=2)
    got = [g.sample.problem_id for g in loader(samples)]
    assert got == [samples[0].problem_id, samples[3].problem_id]
    assert dict(loader.skipped) == {"corrupt": 2}
