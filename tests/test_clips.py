"""Video clips: random temporal crops and strides from video files (PyAV), and pans/zooms synthesised from photos."""

import numpy as np
import pytest
import torch
from PIL import Image

from tinyae.data.clips import ClipPolicy, PhotoClips, VideoFolder, pan_zoom, read_frames
from tinyae.errors import DataError

av = pytest.importorskip("av")


def write_video(path, frames: int, size=(48, 40)) -> None:
    """A lossless video whose frame i is flat grey level 8 * i (so a frame tells its index)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=24)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "bgr0"
        for i in range(frames):
            array = np.full((size[1], size[0], 3), 8 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_a_video_clip_is_a_random_temporal_crop_with_a_random_stride(tmp_path):
    write_video(tmp_path / "ramp.mkv", 30)
    clips = VideoFolder(tmp_path, ClipPolicy(frames=5, size=32, min_stride=1, max_stride=3), seed=0)
    assert len(clips) == 1 and clips.lengths == [30]
    strides = set()
    for seed in range(6):
        clip = VideoFolder(tmp_path, ClipPolicy(frames=5, size=32, min_stride=1, max_stride=3), seed=seed)[0]
        assert clip.shape == (3, 5, 32, 32)
        levels = ((clip[0, :, 0, 0] + 1) * 127.5 / 8).round()  # the frame indices it holds
        steps = levels.diff()
        assert (steps == steps[0]).all() and 1 <= steps[0] <= 3
        strides.add(int(steps[0]))
    assert len(strides) > 1
    assert torch.equal(clips[0], clips[0])  # the same clip whoever draws it


def test_a_video_too_short_for_a_clip_is_refused_in_one_sentence(tmp_path):
    write_video(tmp_path / "short.mkv", 3)
    with pytest.raises(DataError, match="gives a clip of 9 frames: 0 cannot be read and 1 are shorter"):
        VideoFolder(tmp_path, ClipPolicy(frames=9, size=32))
    with pytest.raises(DataError, match="too few frames"):
        read_frames(tmp_path / "short.mkv", 0, 3, stride=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No video files"):
        VideoFolder(tmp_path / "empty")


def test_a_pan_across_a_ramp_moves_the_view_steadily_one_way():
    ramp = torch.linspace(-1, 1, 256).view(1, 1, -1).expand(3, 128, 256)
    clip = pan_zoom(ramp, frames=9, size=32, gen=torch.Generator().manual_seed(3))
    assert clip.shape == (3, 9, 32, 32) and clip.abs().max() <= 1
    means = clip.mean(dim=(0, 2, 3))
    steps = means.diff()
    assert (steps >= -1e-4).all() or (steps <= 1e-4).all()  # monotonic: a linear camera path
    assert (steps - steps.mean()).abs().max() < 0.05  # and steady


def test_photo_clips_are_synthesised_from_each_photo_deterministically(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    clips = PhotoClips(tmp_path, ClipPolicy(frames=5, size=32), seed=1, clips_per_photo=4)
    assert len(clips) == 4
    assert clips[2].shape == (3, 5, 32, 32) and torch.equal(clips[2], clips[2])
    assert not torch.equal(clips[2], clips[3])
    with pytest.raises(DataError, match="smaller than the 256 px clips"):
        PhotoClips(tmp_path, ClipPolicy(frames=5, size=256))[0]


def test_a_clip_too_short_or_unreadable_among_good_videos_is_skipped_and_counted(tmp_path):
    write_video(tmp_path / "good.mkv", 12)
    write_video(tmp_path / "short.mkv", 2)  # drew random_(from=0, to=-6) before
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 64)  # aborted a run with "[Errno ...] Invalid data"
    with pytest.warns(UserWarning) as caught:
        clips = VideoFolder(tmp_path, ClipPolicy(frames=9, size=32))
    said = " ".join(str(w.message) for w in caught)
    assert "Skipping unreadable video" in said and "broken.mp4" in said
    assert "Skipping 1 video shorter than the 9-frame clips: short.mkv (2 frames)" in said
    assert [p.name for p in clips.files] == ["good.mkv"] and len(clips.skipped) == 2
    assert all(clips[i].shape == (3, 9, 32, 32) for i in range(3))


def test_a_folder_of_short_videos_is_refused_naming_the_files_not_path_objects(tmp_path):
    write_video(tmp_path / "a.mkv", 2)
    write_video(tmp_path / "b.mkv", 3)
    with pytest.warns(UserWarning), pytest.raises(DataError) as info:
        VideoFolder(sorted(tmp_path.glob("*.mkv")), ClipPolicy(frames=9, size=32))
    message = str(info.value)
    assert "PosixPath" not in message and "a.mkv, b.mkv" in message and "2 are shorter" in message
