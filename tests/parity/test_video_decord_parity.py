"""Video frames against the release's reader (issue 8, items 12 and 14): for phone-like and variable-frame-
rate videos made here with PyAV, `lego encode`'s `input` holds the frames decord's
`VideoReader(width=224, height=224).get_batch(np.arange(0, vlen, vlen / n))` returns, CLIP-normalised as the
release does, and `lego probe` reports those frames' own timestamps. decord is installed by
bench/requirements.txt (scripts/setup.sh)."""
import json
import struct
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_lego

# decord runs in a child process: it carries its own FFmpeg libraries, and loaded into the test process
# they break PyAV's encoders for the tests that run after this module (libvpx-vp9 refused to open).
if subprocess.run([sys.executable, "-c", "import decord"], capture_output=True).returncode != 0:
    pytest.skip("decord (bench/requirements.txt, installed by scripts/setup.sh) does not import", allow_module_level=True)

DECORD_SCRIPT = """
import sys, numpy as np, decord
path, size, frames, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
vr = decord.VideoReader(path, width=size, height=size, num_threads=1)
n = len(vr)
indices = np.arange(0, n, n / min(frames, n)).astype(int)
np.savez(out, indices=indices, frames=vr.get_batch(indices.tolist()).asnumpy(),
         times=vr.get_frame_timestamp(indices.tolist())[:, 0])
"""

FRAMES, SIZE = 8, 224
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1, 1)


def write_vfr(path, frames, intervals, w, h, codec="libx264", options=None, color=None):
    """A video whose frame i is shown for intervals[i] seconds (explicit pts on a 1/90000 clock)."""
    import av

    rng = np.random.default_rng(len(intervals))
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = s.codec_context.time_base = Fraction(1, 90000)
        s.options = options or {}
        if color:  # what phones tag their HD video with
            cc = s.codec_context
            cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = color
        # YUV 4:2:0 planes made directly (no RGB conversion to pay for): moving gradients under a fixed
        # noise texture, chroma included, so that a scaler or matrix that differs shows.
        y, x = np.mgrid[0:h, 0:w]
        cy, cx = np.mgrid[0:h // 2, 0:w // 2]
        noise = rng.normal(0, 10, (h + 64, w + 64))
        t = 0.0
        for i in range(frames):
            luma = np.clip((x + 2 * y + 6 * i) % 220 + 16 + noise[i % 64:i % 64 + h, i % 64:i % 64 + w], 0, 255)
            u = (cx * 3 + 5 * i) % 200 + 28
            v = (cy * 3 + 200 - 4 * i) % 200 + 28
            f = av.VideoFrame.from_ndarray(np.concatenate([luma.reshape(-1), u.reshape(-1), v.reshape(-1)]).astype(np.uint8)
                                           .reshape(h * 3 // 2, w), format="yuv420p")
            f.pts, f.time_base = int(round(t * 90000)), Fraction(1, 90000)
            for p in s.encode(f):
                c.mux(p)
            t += intervals[i % len(intervals)]
        for p in s.encode():
            c.mux(p)


def set_rotation(path, clockwise):
    """Writes a display matrix into the mp4's track header, as a phone held upright does."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    assert at > 0
    matrix_at = at + 4 + 4 + (32 if data[at + 4] == 1 else 20) + 8 + 8
    one = 1 << 16
    cos, sin = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[clockwise]
    # (a b u / c d v / x y w) in 16.16 (2.30 for w): a rotation by `clockwise` degrees as displayed.
    struct.pack_into(">9i", data, matrix_at, cos * one, sin * one, 0, -sin * one, cos * one, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))


PHONE = [1 / 30 if i else 0.18 for i in range(41)]  # the phone video: a first interval of 0.18 s
# FFmpeg's enums: colorspace, primaries, transfer BT.709 = 1; range MPEG (limited) = 1, JPEG (full) = 2.
BT709, BT709_FULL = (1, 1, 1, 1), (1, 1, 1, 2)
CASES = {
    # name: (frames, intervals, width, height, codec, encoder options, colour tags, rotation)
    "phone_1080p_h264": (41, PHONE, 1920, 1080, "libx264", {"preset": "ultrafast"}, BT709, None),
    "phone_portrait_90": (41, PHONE, 640, 360, "libx264", {"preset": "veryfast"}, BT709, 90),
    "phone_portrait_270_bframes": (45, PHONE, 480, 272, "libx264", {"preset": "medium", "bf": "3"}, None, 270),
    "phone_upside_down": (30, PHONE, 320, 240, "libx264", {"preset": "ultrafast"}, BT709_FULL, 180),
    # constant rate: indices agree with any reader, so this one checks the scaler and colour matrix alone
    "cfr_hd_scaler_only": (30, [1 / 30], 1280, 720, "libx264", {"preset": "ultrafast"}, BT709, None),
    "vfr_bursts_hevc": (50, [0.02, 0.02, 0.3, 0.05], 352, 288, "libx265", {"x265-params": "log-level=none:bframes=3"}, None, None),
    "vfr_jitter_bframes": (70, [0.033, 0.041, 0.029, 0.1, 0.033], 320, 180, "libx264", {"bf": "2", "g": "12"}, None, None),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny224") / "m"
    run_lego("init-model", "--config", ROOT / "configs/models/tiny.ini", "--out", out,
             "--set", f"video.eva_image_size={SIZE}", "--set", f"video.frames={FRAMES}")
    return out


def decord_reference(path):
    """The release's frames: decord indices, its own 224 x 224 resize, CLIP normalisation."""
    out = path.with_suffix(".decord.npz")
    subprocess.run([sys.executable, "-c", DECORD_SCRIPT, str(path), str(SIZE), str(FRAMES), str(out)], check=True)
    got = np.load(out)
    frames = torch.from_numpy(got["frames"]).permute(3, 0, 1, 2).float()
    return got["indices"], got["times"], (frames / 255 - MEAN) / STD


@pytest.mark.parametrize("name", list(CASES))
def test_encode_input_equals_decord_preprocessing(tmp_path, model, name):
    frames, intervals, w, h, codec, options, color, rotation = CASES[name]
    path = tmp_path / (name + ".mp4")
    write_vfr(path, frames, intervals, w, h, codec, options, color)
    if rotation:
        set_rotation(path, rotation)
    indices, times, ref = decord_reference(path)

    info = json.loads(run_lego("probe", "--in", path, "--frames", FRAMES).stdout)
    assert info["frames"] == frames
    assert info["indices"] == indices.tolist()
    np.testing.assert_allclose(info["timestamps"], times, atol=1e-4)  # the frames' own times, not i / fps

    run_lego("encode", "--model", model, "--modality", "video", "--in", path, "--out", tmp_path / "o.safetensors")
    got = load_file(str(tmp_path / "o.safetensors"))["input"]
    assert got.shape == ref.shape
    diff = (got - ref).abs().mean(dim=(0, 2, 3))  # per frame, on the normalised scale
    print(f"{name}: indices {indices.tolist()}, mean abs diff per frame {[round(d, 4) for d in diff.tolist()]}")
    assert diff.max().item() <= 0.01


def test_probe_reports_the_phone_videos_real_timestamps(tmp_path):
    """The issue's case: frame 5 of a video whose first frame lasts 0.18 s is at 0.18 + 4 / 30 s, where the
    nominal rate puts frame 1."""
    path = tmp_path / "phone.mp4"
    write_vfr(path, 41, PHONE, 320, 240, options={"preset": "ultrafast"})
    info = json.loads(run_lego("probe", "--in", path, "--frames", 8).stdout)
    assert info["indices"] == [0, 5, 10, 15, 20, 25, 30, 35]
    expected = [0.0] + [0.18 + (i - 1) / 30 for i in range(5, 36, 5)]
    np.testing.assert_allclose(info["timestamps"], expected, atol=1e-4)


def test_sampling_decodes_only_what_the_targets_need(tmp_path):
    """Item 14: each target is reached from the keyframe before it (a seek, or decoding on when that is
    fewer frames), and frames that are neither targets nor references of targets are not decoded."""
    path = tmp_path / "gop.mp4"
    # 300 frames, a keyframe every 60, three non-reference B-frames between P-frames
    write_vfr(path, 300, [1 / 30], 320, 240, options={
        "preset": "veryfast", "x264-params": "keyint=60:min-keyint=60:scenecut=0:bframes=3:b-adapt=0:b-pyramid=none"})
    info = json.loads(run_lego("probe", "--in", path, "--frames", 8, "--threads", 1).stdout)
    targets = info["indices"]
    assert targets == np.arange(0, 300, 300 / 8).astype(int).tolist()
    # What decoding every frame from the nearest usable keyframe to each target costs (no frame skipped).
    plan, done = 0, -1
    for t in targets:
        start = max(done + 1, t // 60 * 60)
        plan += t - start + 1
        done = t
    print(f"decoded {info['decoded']} frames; every frame on the keyframe plan: {plan}; up to the last target: {targets[-1] + 1}")
    assert len(targets) <= info["decoded"] <= 0.5 * plan
