"""Every code block of the documentation (README.md, docs/*.md) is run or checked against the real thing:
- python: run, in order, in one namespace per file, against the tiny model (the file names the snippets use
  stand for the fixtures' files; the test substitutes them, nothing else);
- sh: each command's program exists, and each `lego` command's subcommand and flags are ones `lego
  <command> --help` lists (torchrun's and pip's flags likewise); `python -c` lines run;
- ini: every key of a modality or model section is one lego reads (a model.ini with the key added loads,
  or fails for a reason other than an unknown key);
- json: the training rows pass `lego data check` with their media in place;
- the blocks that need an installed SDK (the plugin walk-through, the out-of-tree CMake file and its model
  section) are run by the tests named in ELSEWHERE, which read them from the docs.
A block in a language nobody checks fails the first test: tag pictures `text`."""
import configparser
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import BUILD, ROOT, run_lego
from snippets import LANGUAGES, all_fences, shell_commands

import lego

# Blocks run by other tests, as (doc, language, index among that doc's blocks of the language): the runner
# must read the doc, so a block edited here is a block run there.
ELSEWHERE = {
    ("docs/plugin-sdk.md", "cmake", 0): "tests/e2e/out_of_tree_plugin.sh",
    ("docs/plugin-sdk.md", "ini", 0): "tests/e2e/out_of_tree_plugin.sh",
    ("docs/plugin-sdk.md", "sh", 0): "tests/python/test_pointcloud.py",
    ("docs/plugin-sdk.md", "ini", 1): "tests/python/test_pointcloud.py",
    ("docs/serve.md", "python", 0): "tests/python/test_serve.py",
    ("docs/serve.md", "json", 0): "tests/python/test_serve.py",
}


def keyed(lang):
    """The blocks of one language, each with its (doc, language, index) key."""
    counts, out = {}, []
    for f in all_fences():
        doc = str(f.file.relative_to(ROOT))
        i = counts.get((doc, f.lang), 0)
        counts[(doc, f.lang)] = i + 1
        if f.lang == lang:
            out.append(((doc, lang, i), f))
    return out


def test_every_block_is_in_a_language_the_tests_check():
    fences = all_fences()
    assert len(fences) >= 20
    unknown = [f"{f.where()} ({f.lang or 'no language'})" for f in fences if f.lang not in LANGUAGES]
    assert not unknown, f"tag these blocks with one of {LANGUAGES}: {unknown}"


def test_blocks_run_elsewhere_are_read_from_the_docs_by_their_runner():
    for (doc, lang, index), runner in ELSEWHERE.items():
        assert any(key == (doc, lang, index) for key, _ in keyed(lang)), f"{doc} has no {lang} block {index}"
        text = (ROOT / runner).read_text()
        assert doc.rsplit("/", 1)[-1] in text and "snippets" in text, f"{runner} does not read {doc}'s blocks"


# ---- python ------------------------------------------------------------------------------------------------

def test_python_blocks_are_in_python_md_only():
    """docs/python.md's blocks run below; a Python block elsewhere is run by the test ELSEWHERE names."""
    assert {f.file.name for key, f in keyed("python") if key not in ELSEWHERE} == {"python.md"}


def test_every_python_snippet_of_the_docs_runs(tiny, media, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage1.ini").write_text(
        f"[model]\ndir = {tiny / 'model'}\n[data]\ntrain = {tiny / 'synth' / 'train-rec.json'}\nmax_length = 512\n"
        "[train]\nbatch_size = 4\nlog_every = 5\n[stage]\nname = s1\ntrain = adapter new_tokens\n")
    names = {'"demo-model"': repr(str(tiny / "model")), '"scene.png"': repr(str(media["image"])),
             '"clip.mp4"': repr(str(media["video"]))}
    blocks = [f for key, f in keyed("python") if key not in ELSEWHERE]
    assert len(blocks) >= 5
    namespace = {}
    for block in blocks:
        code = block.body
        for name, path in names.items():
            code = code.replace(name, path)
        exec(compile(code, block.where(), "exec"), namespace)  # noqa: S102 - the docs' own examples
    assert namespace["result"]["steps"] == 20
    assert namespace["s"].result is not None
    out = capsys.readouterr().out
    assert "s1 20/20" in out


# ---- sh ----------------------------------------------------------------------------------------------------

def help_flags(text):
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9_-]*)", text))


@functools.cache
def lego_commands():
    out = run_lego("--help").stdout
    return set(re.findall(r"^  ([a-z][a-z0-9-]*)\s", out, re.M))


@functools.cache
def lego_flags(*command):
    return help_flags(run_lego(*command, "--help").stdout)


@functools.cache
def python_help(*module):
    proc = subprocess.run([sys.executable, "-m", *module, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return help_flags(proc.stdout)


def flag_names(words):
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def check_lego(words, where):
    assert words, f"{where}: `lego` without a command"
    command = words[0]
    assert command in lego_commands(), f"{where}: lego has no command '{command}'"
    path = (command,)
    rest = words[1:]
    if command == "data":  # lego data check ...
        assert rest and rest[0] == "check", f"{where}: lego data's subcommand is check"
        path, rest = (command, "check"), rest[1:]
    known = lego_flags(*path)
    unknown = [f for f in flag_names(rest) if f not in known]
    assert not unknown, f"{where}: `lego {' '.join(path)}` has no {unknown}"


def check_launcher(words, where, known):
    """torchrun and srun: their own flags, then the program (lego, as `--no-python lego ...` says)."""
    assert "lego" in words, f"{where}: {words[0]} runs something other than lego"
    i = words.index("lego")
    if known is not None:
        unknown = [f for f in flag_names(words[1:i]) if f not in known and f.replace("-", "_") not in known]
        assert not unknown, f"{where}: {words[0]} has no {unknown}"
    check_lego(words[i + 1:], where)


def check_shell(command, where):
    words = shlex.split(command, comments=True)
    env = {}
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    program = words[0]
    if program == "lego":
        check_lego(words[1:], where)
    elif program == "torchrun":
        check_launcher(words, where, python_help("torch.distributed.run"))
    elif program == "srun":  # Slurm's: not on this machine; its program is checked
        check_launcher(words, where, None)
    elif program.startswith("build-fuzz/bin/fuzz/"):  # a fuzz target: one that tests/fuzz defines
        name = program.rsplit("/", 1)[-1].removesuffix("_fuzz")
        targets = re.findall(r"^lego_add_fuzz_target\((\w+)", (ROOT / "tests/fuzz/CMakeLists.txt").read_text(), re.M)
        assert name in targets, f"{where}: tests/fuzz defines no fuzz target {name} ({targets})"
    elif program.startswith(("scripts/", "tests/")):
        assert os.access(ROOT / program, os.X_OK), f"{where}: {program} is not an executable of the repository"
    elif program == "curl":  # against `lego serve`: one of its endpoints, and JSON bodies that parse
        urls = [w for w in words if w.startswith("http")]
        assert len(urls) == 1, f"{where}: curl needs one URL"
        path = "/" + urls[0].split("/", 3)[3] if urls[0].count("/") >= 3 else "/"
        assert path in ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions"), f"{where}: lego serve has no {path}"
        for flag in ("-d", "--data"):
            if flag in words and not words[words.index(flag) + 1].startswith("@"):
                json.loads(words[words.index(flag) + 1])
    elif program == "cmake":
        if "-S" in words:
            assert (ROOT / words[words.index("-S") + 1] / "CMakeLists.txt").exists(), f"{where}: no such project"
        assert {"--install", "--build", "-S"} & set(words), f"{where}: a cmake command the test does not know"
    elif program == "pip":
        assert words[1] == "install", f"{where}: pip {words[1]}"
        unknown = [f for f in flag_names(words[2:]) if f not in python_help("pip", "install")]
        assert not unknown, f"{where}: pip install has no {unknown}"
        requirements = (ROOT / "python" / "requirements.txt").read_text()
        for w in (w for w in words[2:] if not w.startswith("-")):
            assert w == "." or re.search(rf"^{re.escape(w)}\b", requirements, re.M), f"{where}: {w} is not pinned"
    elif program.endswith("/python") and words[1] == "-c":
        # Run it, with this interpreter and this build tree.
        env = {k: v.replace("build/python", str(BUILD / "python")) for k, v in env.items()}
        proc = subprocess.run([sys.executable, "-c", words[2]], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env}, cwd=ROOT)
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
    else:
        pytest.fail(f"{where}: teach test_docs.py how to check `{program}`")


def test_every_shell_command_of_the_docs_names_real_programs_and_flags():
    checked = 0
    for _, block in keyed("sh"):
        for command in shell_commands(block.body):
            check_shell(command, block.where())
            checked += 1
    assert checked >= 15


def test_the_shell_check_catches_a_wrong_flag_and_command():
    with pytest.raises(AssertionError, match="no"):
        check_shell("lego infer --model M --no-such-flag 1", "x")
    with pytest.raises(AssertionError, match="no command"):
        check_shell("lego frobnicate", "x")
    with pytest.raises(AssertionError, match="torchrun has no"):
        check_shell("torchrun --nproc-per-nodes 2 --no-python lego train --config s.ini", "x")


# ---- ini ---------------------------------------------------------------------------------------------------

def parse_ini(text):
    p = configparser.ConfigParser(inline_comment_prefixes=("#",), interpolation=None, strict=True)
    p.optionxform = str
    p.read_string(text)
    return p


def load_error(model_dir):
    try:
        lego.Model.load(model_dir)
        return None
    except lego.Error as e:
        return str(e)


def test_every_model_key_of_the_docs_is_one_lego_reads(tiny, tmp_path):
    """The tiny model has every section the docs' model blocks use. A key it already has is read (a model
    loads only when every key was read); any other is added, with the docs' value, to a copy: the copy loads,
    or fails for a reason other than an unknown key, which only a key that something reads can give."""
    base_text = (tiny / "model" / "model.ini").read_text()
    base = parse_ini(base_text)
    copy = tmp_path / "model"
    copy.mkdir()
    for f in (tiny / "model").iterdir():
        if f.name != "model.ini":
            os.symlink(f, copy / f.name)
    (copy / "model.ini").write_text(base_text)
    assert load_error(copy) is None
    added = 0
    for key, block in keyed("ini"):
        if key in ELSEWHERE:
            continue
        for section in parse_ini(block.body).sections():
            assert base.has_section(section), f"{block.where()}: the tiny model has no [{section}]"
            for k, v in parse_ini(block.body).items(section):
                if base.has_option(section, k):
                    continue
                edited = parse_ini(base_text)
                edited.set(section, k, v)
                with open(copy / "model.ini", "w") as out:
                    edited.write(out)
                error = load_error(copy)
                assert error is None or "unknown key" not in error, f"{block.where()}: [{section}] {k}: {error}"
                added += 1
    assert added >= 3
    # The check can fail: a key nobody reads is refused.
    edited = parse_ini(base_text)
    edited.set("image", "no_such_key", "1")
    with open(copy / "model.ini", "w") as out:
        edited.write(out)
    assert "unknown key" in load_error(copy)


# ---- json --------------------------------------------------------------------------------------------------

def test_every_training_row_of_the_docs_passes_data_check(tiny, media, tmp_path):
    blocks = [f for key, f in keyed("json") if key not in ELSEWHERE]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        row = json.loads(block.body)
        d = tmp_path / f"row{i}"
        for modality in ("image", "video", "sound"):
            if modality in row:
                target = d / "media" / row[modality]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(media[modality], target)
        (d / "data.json").write_text(json.dumps([row]))
        (d / "stage.ini").write_text(
            f"[model]\ndir = {tiny / 'model'}\n[data]\ntrain = data.json\nimage_folder = media\n"
            "video_folder = media\nsound_folder = media\n[train]\nout = run\n[stage]\ntrain = adapter\n")
        proc = run_lego("data", "check", "--config", d / "stage.ini", "--json", check=False)
        assert proc.returncode == 0, f"{block.where()}: {proc.stdout}{proc.stderr}"
        [report] = json.loads(proc.stdout)
        assert report["rows"] == 1 and report["bad_rows"] == 0 and report["media"] == 1, report
        assert report["media_missing"] == 0 and report["media_unreadable"] == 0, report
