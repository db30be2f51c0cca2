"""Every Python snippet of docs/python.md runs, in order, in one namespace, against the tiny model: the
file names the snippets use stand for the fixtures' files (the test substitutes them, nothing else)."""
import re

import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "python.md"


def snippets():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_docs_have_python_snippets():
    assert len(snippets()) >= 5


def test_every_python_snippet_of_the_docs_runs(tiny, media, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage1.ini").write_text(
        f"[model]\ndir = {tiny / 'model'}\n[data]\ntrain = {tiny / 'synth' / 'train-rec.json'}\nmax_length = 512\n"
        "[train]\nbatch_size = 4\nlog_every = 5\n[stage]\nname = s1\ntrain = adapter new_tokens\n")
    names = {'"demo-model"': repr(str(tiny / "model")), '"scene.png"': repr(str(media["image"])),
             '"clip.mp4"': repr(str(media["video"]))}
    namespace = {}
    for code in snippets():
        for name, path in names.items():
            code = code.replace(name, path)
        exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
    assert namespace["result"]["steps"] == 20
    assert namespace["s"].result is not None
    out = capsys.readouterr().out
    assert "s1 20/20" in out
