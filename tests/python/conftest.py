"""Fixtures of the Python API suite: the module from the build tree (PYTHONPATH=build/python, as
scripts/test.sh sets it), the lego binary that makes the tiny model and its media, and both made once."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("LEGO_BUILD_DIR", ROOT / "build"))
TINY = ROOT / "configs" / "models" / "tiny-ground.ini"

if str(BUILD / "python") not in sys.path:
    sys.path.insert(0, str(BUILD / "python"))


def lego_bin() -> Path:
    path = Path(os.environ.get("LEGO_BIN", BUILD / "bin" / "lego"))
    if not path.exists():
        pytest.fail(f"lego binary not found at {path}: build first or set LEGO_BIN")
    return path


def run_lego(*args, check=True):
    proc = subprocess.run([str(lego_bin()), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lego {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny random grounding model (image, video, sound) and a little SynthGround data with its media."""
    d = tmp_path_factory.mktemp("py")
    run_lego("init-model", "--config", TINY, "--out", d / "model", "--seed", 3)
    counts = {"train.rec": 16, "train.caption": 2, "train.temporal": 2, "train.sound_localization": 2,
              "val.rec": 0, "val.caption": 0, "val.temporal": 0, "val.sound_localization": 0,
              "test.rec": 0, "test.caption": 0, "test.temporal": 0, "test.sound_localization": 0}
    args = [a for k, v in counts.items() for a in ("--count", f"{k}={v}")]
    run_lego("synth", "--config", TINY, "--out", d / "synth", "--seed", 5, *args)
    return d


@pytest.fixture(scope="session")
def media(tiny):
    """One file of each modality from the synthesised data: {modality: path}."""
    import json

    out = {}
    for task, key in (("rec", "image"), ("temporal", "video"), ("sound_localization", "sound")):
        rows = json.loads((tiny / "synth" / f"train-{task}.json").read_text())
        out[key] = tiny / "synth" / rows[0][key]
    return out


@pytest.fixture(scope="session")
def model(tiny):
    import lego

    return lego.Model.load(tiny / "model")
