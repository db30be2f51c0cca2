"""Reproducible requests: any randomness in reading media draws from the request's seed alone, so the same
request twice gives the same media tensors and the same answer; the video branch's training crop
(RandomResizedCrop, `random_crop = true`) included."""
import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import ROOT, run_lego
from test_av_parity import make_video


@pytest.fixture(scope="module")
def cropping_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeded") / "tiny"
    run_lego("init-model", "--config", ROOT / "configs" / "models" / "tiny.ini", "--out", out, "--seed", 4,
             "--set", "video.random_crop=true")
    return out


def encode(model, media, out, seed):
    run_lego("encode", "--model", model, "--modality", "video", "--in", media, "--out", out, "--media-seed", seed)
    return load_file(str(out))


def test_same_seed_gives_the_same_video_crop_and_another_seed_another(cropping_model, tmp_path):
    make_video(tmp_path / "v.mp4", frames=24, w=160, h=96)
    a = encode(cropping_model, tmp_path / "v.mp4", tmp_path / "a.safetensors", 5)
    b = encode(cropping_model, tmp_path / "v.mp4", tmp_path / "b.safetensors", 5)
    c = encode(cropping_model, tmp_path / "v.mp4", tmp_path / "c.safetensors", 6)
    for key in ("input", "encoder", "tokens"):
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    diff = (a["input"] - c["input"]).abs().max().item()
    print(f"largest input difference between seeds 5 and 6: {diff:.3f}")
    assert diff > 0.1, "another seed should crop differently"


def test_the_same_request_twice_gives_the_same_answer(cropping_model, tmp_path):
    make_video(tmp_path / "v.mp4", frames=24, w=160, h=96)
    args = ("infer", "--model", cropping_model, "--media", f"video={tmp_path / 'v.mp4'}", "--prompt", "What happens?",
            "--max-new-tokens", 8, "--temperature", 0.9, "--seed", 2, "--media-seed", 11, "--json")
    first, second = (json.loads(run_lego(*args).stdout) for _ in range(2))
    assert first["token_ids"] == second["token_ids"]
    assert first["prompt_token_ids"] == second["prompt_token_ids"]
