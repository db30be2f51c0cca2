"""The point-cloud modality of examples/pointcloud-plugin, built the way a third party builds it: against the
SDK installed to a temporary prefix (find_package(Lego)), then loaded from its own folder by the `lego`
command and by the Python module alike. Its readers agree across PLY (ASCII, both binary byte orders), XYZ
and .npy, refuse hostile files in one line, and SynthGround and `lego eval --task rec3d` carry 3-D boxes.
Core and the command line name no modality: the released-defaults file alone may."""
import configparser
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import snippets
from conftest import BUILD, ROOT, lego_bin, run_lego

import lego

CONFIG = ROOT / "examples" / "pointcloud-plugin" / "tiny-points.ini"
TASKS = ("rec", "caption", "temporal", "sound_localization", "rec3d")


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The walk-through's first step, docs/plugin-sdk.md's first shell block, run as written (read by
    snippets.py) with its folders put in a temporary one: the SDK installed to a prefix, the plugin built
    against it, and `lego plugins` listing it as the block's comment says."""
    work = tmp_path_factory.mktemp("pointcloud")
    prefix, build = work / "prefix", work / "plugin"
    block = next(f for f in snippets.fences(ROOT / "docs" / "plugin-sdk.md") if f.lang == "sh")
    commands = snippets.shell_commands(block.body)
    assert len(commands) == 4, commands
    env = dict(os.environ, CMAKE_BUILD_TYPE="Release", CMAKE_GENERATOR="Ninja")
    if shutil.which("ccache"):
        env["CMAKE_CXX_COMPILER_LAUNCHER"] = "ccache"
    for command in commands:
        comment = command.split("#", 1)[1].split() if "#" in command else []
        words = [{"/opt/lego": str(prefix), "build-pointcloud": str(build), "build": str(BUILD),
                  "lego": str(lego_bin())}.get(w, w.replace("/opt/lego", str(prefix)))
                 for w in shlex.split(command, comments=True)]
        proc = subprocess.run(words, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
        assert proc.returncode == 0, f"{block.where()}: {command}\n{proc.stdout}{proc.stderr}"
        if comment:  # what the block says the command prints
            line = next((l for l in proc.stdout.splitlines() if comment[0] in l.split()), "")
            assert all(w in line.split() for w in comment), f"{command}: {comment} not in {proc.stdout}"
    return build


def test_the_docs_model_sections_are_those_of_the_tiny_points_model():
    """docs/plugin-sdk.md's model block is an excerpt of tiny-points.ini, which the fixtures below load."""
    block = [f for f in snippets.fences(ROOT / "docs" / "plugin-sdk.md") if f.lang == "ini"][1]
    doc, ours = configparser.ConfigParser(interpolation=None), configparser.ConfigParser(interpolation=None)
    doc.read_string(block.body)
    ours.read(CONFIG)
    pairs = [(s, k, v) for s in doc.sections() for k, v in doc.items(s)]
    assert len(pairs) >= 4
    for s, k, v in pairs:
        assert ours.get(s, k, fallback=None) == v, f"{block.where()}: [{s}] {k} = {v}, tiny-points.ini differs"


@pytest.fixture(scope="module")
def points(plugin_dir, tmp_path_factory):
    """The tiny point-cloud model, trained a little (`lego.train`, every part, on its rec3d rows: the loss
    falls), and a little SynthGround rec3d data. `points / "model"` is the trained model."""
    d = tmp_path_factory.mktemp("points")
    run_lego("init-model", "--config", CONFIG, "--plugin-dir", plugin_dir, "--out", d / "init", "--seed", 3)
    counts = {f"{s}.{t}": 0 for s in ("train", "val", "test") for t in TASKS}
    counts.update({"train.rec3d": 6, "test.rec3d": 6})
    args = [a for k, v in counts.items() for a in ("--count", f"{k}={v}")]
    run_lego("synth", "--config", CONFIG, "--plugin-dir", plugin_dir, "--out", d / "synth", "--seed", 5, *args)
    (d / "stage.ini").write_text(
        f"[model]\ndir = init\n[data]\ntrain = synth/train-rec3d.json\nmax_length = 256\n[train]\nout = run\n"
        "batch_size = 3\nmax_steps = 40\nlog_every = 5\nseed = 1\n[optim]\nlr = 1e-3\n[stage]\nname = rec3d\n"
        "train = encoder adapter llm\n")
    losses = []
    result = lego.train(d / "stage.ini", plugin_dirs=[plugin_dir], progress=lambda p: losses.append(p.loss))
    assert result["steps"] == 40 and len(losses) >= 8
    assert losses[-1] < 0.5 * losses[0], losses  # 6 rows: it learns them
    shutil.copytree(d / "run" / "model", d / "model")
    return d


@pytest.fixture(scope="module")
def model(points, plugin_dir):
    return lego.Model.load(points / "model", plugin_dirs=[plugin_dir])


def scene(points):
    rows = json.loads((points / "synth" / "train-rec3d.json").read_text())
    return points / "synth" / rows[0]["pointcloud"], rows[0]


def test_the_installed_sdk_builds_a_plugin_both_front_ends_load(plugin_dir):
    records = json.loads(run_lego("plugins", "--json", "--plugin-dir", plugin_dir).stdout)
    mine = [r for r in records if r["modality"] == "pointcloud"]
    assert len(mine) == 1 and mine[0]["state"] == "loaded", records
    assert Path(mine[0]["file"]).parent == plugin_dir
    py = [p for p in lego.plugins([plugin_dir]) if p["modality"] == "pointcloud"]
    assert py and py[0]["loaded"] and py[0]["placeholder"] == "<points>" and py[0]["box_values"] == 6
    assert set(py[0]["file_types"]) == {"ply", "xyz", "npy"}


def test_synthground_writes_3d_referring_expressions(points):
    file, row = scene(points)
    assert file.suffix == ".ply" and file.exists()
    question, answer = row["conversations"][0]["value"], row["conversations"][1]["value"]
    assert question.startswith("<points>\n")
    boxes = lego.grounding.parse(answer).boxes
    assert len(boxes) == 1 and len(boxes[0].values) == 6
    v = boxes[0].values
    assert all(0 <= x <= 1 for x in v) and v[0] < v[3] and v[1] < v[4] and v[2] < v[5]


def test_infer_answers_about_a_cloud_from_the_cli_and_python_alike(points, plugin_dir, model):
    file, _ = scene(points)
    prompt = "Where is the red cube?"
    base = ["infer", "--model", points / "model", "--plugin-dir", plugin_dir, "--prompt", prompt, "--json",
            "--max-new-tokens", "12", "--temperature", "0.8", "--seed", "4", "--ignore-eos"]
    named = json.loads(run_lego(*base, "--media", f"pointcloud={file}").stdout)
    routed = json.loads(run_lego(*base, "--media", file).stdout)
    assert named["token_ids"] == routed["token_ids"] and len(named["token_ids"]) == 12
    points_tokens = model.placeholder("pointcloud")
    assert points_tokens == "<points>"
    ours = model.generate(prompt, {"pointcloud": file}, max_new_tokens=12, temperature=0.8, seed=4, stop_at_eos=False)
    assert ours.token_ids == named["token_ids"] and ours.text == named["text"]
    features = model.encode("pointcloud", file)
    assert tuple(features.shape) == (8, 128)


def write_clouds(d, xyz, rgb):
    """The same cloud in every format the plugin reads."""
    n = len(xyz)
    files = {}
    header = (f"ply\nformat {{}} 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nelement face 0\n"
              "property list uchar int vertex_indices\nend_header\n")
    lines = "".join(f"{x:.9g} {y:.9g} {z:.9g} {r} {g} {b}\n" for (x, y, z), (r, g, b) in zip(xyz, rgb))
    files["ascii.ply"] = (header.format("ascii") + lines).encode()
    for name, fmt, order in (("le.ply", "binary_little_endian", "<"), ("be.ply", "binary_big_endian", ">")):
        body = b"".join(struct.pack(order + "fffBBB", *p, *c) for p, c in zip(xyz, rgb))
        files[name] = header.format(fmt).encode() + body
    files["cloud.xyz"] = ("# x y z r g b\n" + lines).encode()
    for name, path in files.items():
        (d / name).write_bytes(path)
    for dt in ("<f4", "<f8", ">f8"):
        arr = np.concatenate([np.asarray(xyz, np.float64), np.asarray(rgb, np.float64) / 255.0], 1).astype(dt)
        np.save(d / f"cloud{dt.replace('<', 'le').replace('>', 'be')}.npy", arr)
    return sorted(d.iterdir())


def test_every_format_reads_the_same_cloud(model, tmp_path):
    rng = np.random.default_rng(0)
    xyz = (rng.random((300, 3)) * [4.0, 2.0, 1.0] - [1.0, 0.5, 3.0]).astype(np.float32).tolist()
    rgb = rng.integers(0, 256, (300, 3)).tolist()
    tensors = {f.name: model.preprocess("pointcloud", f) for f in write_clouds(tmp_path, xyz, rgb)}
    first = tensors["ascii.ply"]
    assert tuple(first.shape) == (256, 6)
    for name, t in tensors.items():
        assert (t - first).abs().max().item() < 1e-6, name
    # Normalised into the unit cube: the longest side (x, 4 units) spans [0, 1], the others keep proportion.
    extent = first[:, :3].max(0).values - first[:, :3].min(0).values
    assert first[:, :3].min().item() >= 0 and first[:, :3].max().item() <= 1
    assert extent[0].item() > 0.95 and extent[1].item() < 0.55 and extent[2].item() < 0.3


def test_fewer_points_than_the_encoder_reads_are_repeated(model, tmp_path):
    f = tmp_path / "three.xyz"
    f.write_text("0 0 0\n1 0 0\n0 2 0\n")
    t = model.preprocess("pointcloud", f)
    assert tuple(t.shape) == (256, 6)
    assert t[:, 3:].eq(0.5).all()  # no colours: mid grey
    assert model.encode("pointcloud", f).isfinite().all()


def hostile_files(d):
    ply = "ply\nformat binary_little_endian 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    npy = lambda arr: (np.save(d / "x.npy", arr), (d / "x.npy").read_bytes())[1]  # noqa: E731
    cases = {
        "truncated.ply": (ply.format(n=1000000).encode() + b"\0" * 24, "format"),
        "too-many.ply": (ply.format(n=1 << 40).encode(), "invalid-argument"),
        "no-count.ply": (ply.format(n="lots").encode(), "format"),
        "no-header-end.ply": (b"ply\nformat ascii 1.0\n" + b"x" * 100, "format"),
        "list-vertex.ply": (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty list uchar int idx\nend_header\n1 0\n",
                            "unsupported"),
        "nan.ply": (ply.format(n=1).encode() + struct.pack("<fff", 0, float("nan"), 0), "format"),
        "short-ascii.ply": (b"ply\nformat ascii 1.0\nelement vertex 5\nproperty float x\nproperty float y\n"
                            b"property float z\nend_header\n1 2 3\n", "format"),
        "four.xyz": (b"1 2 3 4\n", "format"),
        "words.xyz": (b"1 2 three\n", "format"),
        "empty.xyz": (b"", "format"),
        "ints.npy": (npy(np.zeros((4, 3), np.int32)), "unsupported"),
        "wide.npy": (npy(np.zeros((4, 4), np.float32)), "format"),
        "cut.npy": (npy(np.zeros((400, 3), np.float32))[:-100], "format"),
        "inf.npy": (npy(np.array([[0, 0, np.inf]], np.float64)), "format"),
    }
    for name, (data, kind) in cases.items():
        (d / name).write_bytes(data)
    (d / "folder.ply").mkdir()
    cases["folder.ply"] = (None, "invalid-argument")
    return cases


def test_hostile_files_are_refused_in_one_line(model, points, plugin_dir, tmp_path):
    for name, (_, kind) in hostile_files(tmp_path).items():
        with pytest.raises(lego.Error) as e:
            model.preprocess("pointcloud", tmp_path / name)
        message = str(e.value)
        assert "\n" not in message and name in message, (name, message)
        assert e.value.kind == kind, (name, e.value.kind, message)
    proc = run_lego("infer", "--model", points / "model", "--plugin-dir", plugin_dir, "--prompt", "Where?",
                    "--media", tmp_path / "truncated.ply", check=False)
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_eval_scores_3d_boxes_beside_chance(points, plugin_dir, tmp_path):
    report = tmp_path / "report.json"
    run_lego("eval", "--model", points / "model", "--plugin-dir", plugin_dir, "--task", "rec3d", "--data",
             points / "synth" / "test-rec3d.json", "--max-new-tokens", "40", "--report", report)
    r = json.loads(report.read_text())
    assert r["task"] == "rec3d" and r["samples"] == 6
    assert set(r["metrics"]) == {"acc@0.25", "acc@0.5", "miou"} == set(r["chance"])
    assert 0 < r["chance"]["acc@0.25"] <= 1  # answers drawn from the data's own boxes do overlap sometimes


def test_core_and_the_cli_name_no_modality():
    named = []
    for top in ("core", "apps"):
        for f in (ROOT / top).rglob("*"):
            if f.suffix in (".cpp", ".h", ".cu") and f.name != "released_defaults.cpp":
                if re.search(r'"(image|video|sound|pointcloud|points)"', f.read_text(errors="replace")):
                    named.append(str(f.relative_to(ROOT)))
    assert named == []
