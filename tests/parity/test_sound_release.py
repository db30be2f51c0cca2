"""The sound branch's input against the released pipeline (issue 8, items 7 and 13).

The reference is imagebind.data.load_and_transform_audio_data itself (imagebind-unofficial, the code
GroundingGPT vendors): torchaudio.load, torchaudio.functional.resample to 16 kHz, pytorchvideo 0.1.5 clip
times, each clip's mean (over all channels) subtracted in place, Kaldi fbank of channel 0, pad/crop to 204,
normalise. The clip times come from pytorchvideo 0.1.5's own ConstantClipsPerVideoSampler (its
clip_sampling.py, loaded by file). Media are written here (WAV headers by hand, samples from numpy)."""
import importlib
import importlib.metadata
import importlib.util
import json
import math
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, lego_bin, run_lego

IB_STD = 9.138
IB_MEAN_NEG = 4.268  # ImageBind normalises with mean -4.268


def pytorchvideo_clip_sampling():
    """pytorchvideo 0.1.5's own clip_sampling.py (installed --no-deps by scripts/setup.sh), loaded by file:
    the package's __init__ imports its datasets, which need fvcore and more. The module needs only the
    standard library."""
    try:
        dist = importlib.metadata.distribution("pytorchvideo")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("pytorchvideo 0.1.5 is not installed (scripts/setup.sh installs it)")
    assert dist.version == "0.1.5", dist.version
    path = Path(dist.locate_file("pytorchvideo/data/clip_sampling.py"))
    module_spec = importlib.util.spec_from_file_location("pytorchvideo.data.clip_sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release():
    """imagebind.data with pytorchvideo's real clip sampler and its video-only imports stubbed
    (pytorchvideo's transforms and EncodedVideo, pkg_resources)."""
    loaded = sys.modules.get("imagebind")
    if loaded is not None and hasattr(loaded, "__path__"):
        locations = list(loaded.__path__)  # another test module's stand-in for the package
    else:
        spec = importlib.util.find_spec("imagebind")
        if spec is None:
            pytest.skip("imagebind-unofficial is not installed")
        locations = list(spec.submodule_search_locations)
    saved = dict(sys.modules)

    def stub(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        m.__path__ = []
        sys.modules[name] = m
        return m

    stub("pytorchvideo").transforms = stub("pytorchvideo.transforms")
    stub("pytorchvideo.data")
    sys.modules["pytorchvideo.data.clip_sampling"] = pytorchvideo_clip_sampling()
    stub("pytorchvideo.data.encoded_video", EncodedVideo=None)
    if importlib.util.find_spec("pkg_resources") is None:
        stub("pkg_resources")
    if loaded is None or not hasattr(loaded, "__path__"):
        pkg = types.ModuleType("imagebind")  # without the package __init__, which needs pytorchvideo
        pkg.__path__ = locations
        sys.modules["imagebind"] = pkg
    data = importlib.import_module("imagebind.data")
    yield lambda path: data.load_and_transform_audio_data([str(path)], "cpu")[0]
    for name in [n for n in sys.modules if n not in saved and (n.startswith("pytorchvideo") or n == "imagebind.data")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "m"
    run_lego("init-model", "--config", ROOT / "configs/models/tiny.ini", "--out", out)
    return out


def write_wav(path, samples, rate):
    """samples [channels, N]: int16 -> 16-bit PCM, float32 -> IEEE float WAV (format tag 3)."""
    samples = np.asarray(samples)
    channels = samples.shape[0]
    is_float = samples.dtype == np.float32
    width = 4 if is_float else 2
    payload = np.ascontiguousarray(samples.T).astype("<f4" if is_float else "<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 3 if is_float else 1, channels, rate, rate * channels * width, channels * width, 8 * width)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def signal(rate, seconds, channels, seed, dc=0.0):
    """Noise plus a different tone (and offset) per channel, as 16-bit PCM."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    rows = [0.1 * rng.normal(size=t.shape) + 0.2 * np.sin(2 * np.pi * (330 + 470 * c) * t) + dc * (1 + c) for c in range(channels)]
    return (np.clip(np.stack(rows), -1, 1) * 32767).astype(np.int16)


def lego(*args, timeout=60):
    return subprocess.run([str(lego_bin()), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def encode_input(model, path, out):
    r = lego("encode", "--model", model, "--modality", "sound", "--in", path, "--out", out)
    assert r.returncode == 0, r.stderr
    return load_file(str(out))["input"]


CASES = {  # name: (rate, channels, seconds, dc offset)
    "stereo_16k": (16000, 2, 4.0, 0.0),
    "mono_16k_dc_overlapping_clips": (16000, 1, 5.0, 0.3),
    "mono_44k": (44100, 1, 3.3, 0.0),
    "stereo_44k": (44100, 2, 5.0, 0.05),
    "mono_22k": (22050, 1, 2.5, 0.0),
    "stereo_22k": (22050, 2, 7.0, 0.0),
    "mono_48k": (48000, 1, 4.2, 0.0),
    "stereo_48k": (48000, 2, 3.0, 0.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_encode_input_matches_the_release(tmp_path, tiny, release, name):
    rate, channels, seconds, dc = CASES[name]
    path = tmp_path / f"{name}.wav"
    write_wav(path, signal(rate, seconds, channels, seed=len(name), dc=dc), rate)
    ours = encode_input(tiny, path, tmp_path / "o.safetensors")
    ref = release(path)
    assert ours.shape == ref.shape == (3, 1, 128, 204)
    diff = (ours - ref).abs()
    print(f"{name}: max abs diff {diff.max().item():.2e}, mean {diff.mean().item():.2e} (normalised input); "
          f"log-mel max {diff.max().item() * IB_STD:.2e}")
    assert diff.max().item() <= 1e-4


RATES = [44100, 22050, 48000, 8000, 11025, 32000, 96000, 88200, 24000, 1009, 16000]


@pytest.mark.parametrize("rate", RATES)
def test_resampler_matches_torchaudio(tmp_path, rate):
    import torchaudio

    rng = np.random.default_rng(rate)
    channels = 2 if rate % 2 == 0 else 1
    x = rng.uniform(-1, 1, size=(channels, int(1.7 * rate) + 3)).astype(np.float32)
    path = tmp_path / f"r{rate}.wav"
    write_wav(path, x, rate)
    r = lego("probe", "--in", path, "--samples", "--out", tmp_path / "w.safetensors")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    ours = load_file(str(tmp_path / "w.safetensors"))["waveform"]
    loaded, sr = torchaudio.load(str(path))
    assert sr == rate and torch.equal(loaded, torch.from_numpy(x))
    ref = torchaudio.functional.resample(loaded, rate, 16000)
    assert ours.shape == ref.shape and info["samples"] == ref.shape[1] and info["source_rate"] == rate
    diff = (ours - ref).abs().max().item()
    print(f"{rate} -> 16000 Hz, {channels} channel(s): max abs diff {diff:.2e}")
    assert diff <= 1e-5


def float_wav(path, samples, rate=16000):
    write_wav(path, np.asarray(samples, dtype=np.float32)[None], rate)


@pytest.mark.parametrize("kind,first", [("inf", 1234), ("nan_every_7th", 3), ("minus_inf", 40000)])
def test_non_finite_samples_are_refused_naming_the_first(tmp_path, tiny, kind, first):
    x = (0.1 * np.random.default_rng(0).normal(size=48000)).astype(np.float32)
    if kind == "inf":
        x[1234] = np.inf
    elif kind == "nan_every_7th":
        x[3::7] = np.nan
    else:
        x[40000] = -np.inf
    path = tmp_path / f"{kind}.wav"
    float_wav(path, x)
    for args in (["encode", "--model", tiny, "--modality", "sound", "--in", path, "--out", tmp_path / "o.st"],
                 ["probe", "--in", path, "--samples"]):
        r = lego(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert path.name in lines[0] and f"sample {first} of channel 0" in lines[0], lines[0]
        assert f"{first / 16000:.6f} s" in lines[0] and ("NaN" if kind.startswith("nan") else "infinite") in lines[0]
    assert not (tmp_path / "o.st").exists()


def test_huge_samples_give_a_finite_input_offset_by_their_scale(tmp_path, tiny, release):
    x = (0.1 * np.random.default_rng(5).normal(size=(1, 3 * 44100))).astype(np.float32)
    float_wav(tmp_path / "plain.wav", x[0], 44100)
    plain = encode_input(tiny, tmp_path / "plain.wav", tmp_path / "p.st")
    assert (plain - release(tmp_path / "plain.wav")).abs().max().item() <= 1e-4
    for scale in (2.0 ** 100, 1e30, 3e37):
        float_wav(tmp_path / "huge.wav", x[0] * np.float32(scale), 44100)
        huge = encode_input(tiny, tmp_path / "huge.wav", tmp_path / "h.st")
        assert torch.isfinite(huge).all()
        # Energies scale by scale^2: log-mel + 2 ln(scale), normalised; the padding frames stay as they are.
        offset = 2 * math.log(scale) / IB_STD
        # Mel bins without any FFT bin (the lowest ones) have zero energy, floored at log(eps) in both.
        live = plain[..., :198] > (math.log(np.finfo(np.float32).eps) + IB_MEAN_NEG) / IB_STD + 1e-3
        assert live.float().mean() > 0.9
        diff = (huge[..., :198] - plain[..., :198] - offset)[live].abs().max().item()
        print(f"scale {scale:.3g}: max abs diff from plain + offset {diff:.2e}")
        assert diff <= 1e-4
        assert torch.equal(huge[..., 198:], plain[..., 198:])
    # The release itself gives inf/NaN here.
    assert not torch.isfinite(release(tmp_path / "huge.wav")).all()
    float_wav(tmp_path / "flat.wav", np.full(32000, 1e30, np.float32))
    assert torch.isfinite(encode_input(tiny, tmp_path / "flat.wav", tmp_path / "f.st")).all()


def test_downmix_is_an_option(tmp_path, tiny, release):
    path = tmp_path / "stereo.wav"
    write_wav(path, signal(44100, 3.0, 2, seed=9), 44100)
    downmix = tmp_path / "downmix"
    run_lego("init-model", "--config", ROOT / "configs/models/tiny.ini", "--out", downmix, "--set", "sound.channels=downmix")
    first = encode_input(tiny, path, tmp_path / "a.st")
    mixed = encode_input(downmix, path, tmp_path / "b.st")
    assert (first - release(path)).abs().max().item() <= 1e-4
    shift = (mixed - first).abs().mean().item()
    print(f"FFmpeg down-mix vs the release's channel 0: mean abs diff {shift:.3f} (normalised)")
    assert shift > 0.01
    bad = tmp_path / "bad"
    r = lego("init-model", "--config", ROOT / "configs/models/tiny.ini", "--out", bad, "--set", "sound.channels=left")
    if r.returncode == 0:  # init-model may not build the plugin; loading the model must refuse the key
        r = lego("encode", "--model", bad, "--modality", "sound", "--in", path, "--out", tmp_path / "c.st")
    assert r.returncode == 1 and "sound.channels" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("rate", [0, 2_000_000, 2_147_483_647, 4_294_967_295])
def test_absurd_sample_rates_in_the_header_are_refused(tmp_path, tiny, rate):
    path = tmp_path / f"rate{rate}.wav"
    write_wav(path, signal(16000, 1.0, 1, seed=1), 16000)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 24, rate)  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    for args in (["probe", "--in", path, "--samples"],
                 ["encode", "--model", tiny, "--modality", "sound", "--in", path, "--out", tmp_path / "o.st"]):
        r = lego(*args, timeout=20)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and path.name in lines[0], (r.returncode, r.stderr[-300:])
