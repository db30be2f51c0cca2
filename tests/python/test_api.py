"""The Python API (lego.Model, lego.plugins, lego.train, lego.grounding, lego.Error) on a tiny random model:
each answer equals `lego infer --json` on the same input and seed, streaming gives the same text, encode
equals `lego encode`, training runs and reports progress, and every failure is a lego.Error of its kind."""
import json
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_lego

import lego

SAMPLED = {"max_new_tokens": 12, "temperature": 0.9, "top_p": 0.9, "seed": 7}


def cli_answer(tiny, media, prompt, **sampling):
    args = ["infer", "--model", tiny / "model", "--prompt", prompt, "--json"]
    for name, path in media.items():
        args += ["--media", f"{name}={path}"]
    for k, v in sampling.items():
        args += [f"--{k.replace('_', '-')}", v]
    return json.loads(run_lego(*args).stdout)


def test_import_exposes_the_api():
    assert issubclass(lego.Error, RuntimeError)
    for name in ("Model", "Result", "Box", "Span", "Stream", "plugins", "train", "grounding", "Progress"):
        assert hasattr(lego, name), name
    from lego.grounding import parse  # a real submodule path

    assert parse is lego.grounding.parse


def test_plugins_lists_the_build_trees_modalities():
    found = {p["modality"]: p for p in lego.plugins() if p["loaded"]}
    assert {"image", "video", "sound"} <= set(found)
    assert found["image"]["placeholder"] == "<image>"
    assert found["image"]["box_values"] == 4 and found["video"]["spans"]
    assert all(p["file"] and p["reason"] == "" for p in found.values())


@pytest.mark.parametrize("modality", ["image", "video", "sound"])
def test_generate_equals_the_cli_for_each_modality(tiny, model, media, modality):
    prompt = "What is in it?"
    ours = model.generate(prompt, {modality: media[modality]}, **SAMPLED)
    cli = cli_answer(tiny, {modality: media[modality]}, prompt, **SAMPLED)
    assert ours.text == cli["text"]
    assert ours.token_ids == cli["token_ids"]
    assert ours.prompt_token_ids == cli["prompt_token_ids"]
    assert ours.finish_reason == cli["finish_reason"]
    # A random model seldom writes a box; where it does, each is mapped onto its medium as the CLI maps it.
    assert [b.box_square for b in ours.boxes] == [b["box_square"] for b in cli["boxes"]]
    assert [b.box for b in ours.boxes] == [b["box"] for b in cli["boxes"]]
    assert [s.span for s in ours.spans] == [tuple(s["span"]) for s in cli["spans"]]
    assert ours.generated_tokens == len(ours.token_ids) and ours.encode_ms > 0


def test_generate_with_all_media_at_once_and_by_extension(tiny, model, media):
    prompt = "Describe them."
    ours = model.generate(prompt, dict(media), **SAMPLED)
    cli = cli_answer(tiny, media, prompt, **SAMPLED)
    assert ours.token_ids == cli["token_ids"]
    # A list of paths is routed by extension, as `--media PATH` is.
    routed = model.generate(prompt, [media["image"]], **SAMPLED)
    assert routed.token_ids == model.generate(prompt, {"image": [media["image"]]}, **SAMPLED).token_ids


def test_streaming_callback_and_iterator_give_the_answer(model, media):
    pieces = []
    r = model.generate("Tell me.", {"image": media["image"]}, stream=pieces.append, **SAMPLED)
    assert "".join(pieces) == r.text and r.text
    s = model.stream("Tell me.", {"image": media["image"]}, **SAMPLED)
    assert isinstance(s, lego.Stream)
    assert "".join(s) == r.text
    assert s.result.token_ids == r.token_ids


def test_an_exception_in_the_stream_callback_stops_the_request(model, media):
    def boom(_):
        raise ValueError("enough")

    with pytest.raises(ValueError, match="enough"):
        model.generate("Tell me.", {"image": media["image"]}, stream=boom, **SAMPLED)
    # The model still answers afterwards.
    assert model.generate("Tell me.", {"image": media["image"]}, **SAMPLED).text


def test_stream_iterator_raises_the_requests_error(model, tmp_path):
    with pytest.raises(lego.Error) as e:
        list(model.stream("Hi", {"image": tmp_path / "missing.png"}, max_new_tokens=2))
    assert e.value.kind == "not-found"


@pytest.mark.parametrize("modality", ["image", "video", "sound"])
def test_encode_equals_the_cli_and_takes_tensors(tiny, model, media, modality, tmp_path):
    out = tmp_path / "enc.safetensors"
    run_lego("encode", "--model", tiny / "model", "--modality", modality, "--in", media[modality], "--out", out)
    cli = load_file(out)
    with torch.no_grad():
        features = model.encode(modality, media[modality])
        pre = model.preprocess(modality, media[modality])
        from_tensor = model.encode(modality, pre)
    assert isinstance(features, torch.Tensor) and features.dim() == 2
    assert torch.equal(pre, cli["input"].reshape(pre.shape))
    assert torch.equal(features, cli["tokens"].reshape(features.shape))
    assert torch.equal(from_tensor, features)


def test_encode_keeps_autograd_to_the_caller(model, media):
    with torch.no_grad():
        assert not model.encode("image", media["image"]).requires_grad
    assert model.encode("image", media["image"]).requires_grad  # the adapter's parameters train


def test_long_work_releases_the_gil(model, media):
    ticks = 0
    done = threading.Event()

    def answer():
        model.generate("Tell me a long story.", {"video": media["video"]}, max_new_tokens=48, stop_at_eos=False)
        done.set()

    t = threading.Thread(target=answer)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    # Were the GIL held while C++ works, this loop would stall for the whole answer.
    assert ticks > 20


def test_train_runs_a_stage_and_reports_progress(tiny, tmp_path):
    cfg = tmp_path / "stage.ini"
    cfg.write_text(f"[model]\ndir = {tiny / 'model'}\n[data]\ntrain = {tiny / 'synth' / 'train-rec.json'}\n"
                   "max_length = 512\n[train]\nbatch_size = 4\nlog_every = 1\nsave_every = 100\n"
                   "[stage]\nname = py\ntrain = adapter llm\n")
    seen, notices = [], []
    result = lego.train(cfg, {"train.out": tmp_path / "out", "train.max_steps": 3, "optim.lr": 1e-3,
                              "data.group_by_length": False},
                        progress=seen.append, notice=notices.append)
    assert result["steps"] == 3 and result["examples"] > 0
    assert [p.step for p in seen] == [1, 2, 3] and all(p.total_steps == 3 for p in seen)
    assert all(p.loss > 0 and p.stage == "py" for p in seen)
    trained = lego.Model.load(result["model_dir"])
    assert trained.modalities == lego.Model.load(tiny / "model").modalities


def test_errors_are_lego_errors_with_their_kind(tiny, model, media, tmp_path):
    def kind_of(call):
        with pytest.raises(lego.Error) as e:
            call()
        assert str(e.value)  # one line naming what was wrong
        return e.value.kind

    assert kind_of(lambda: lego.Model.load(tmp_path / "nowhere")) == "not-found"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.ini").write_text("[llm]\nhidden_size = many\n")
    assert kind_of(lambda: lego.Model.load(bad)) in ("format", "invalid-argument", "not-found")
    assert kind_of(lambda: model.generate("Hi", {"pointcloud": media["image"]})) == "invalid-argument"
    assert kind_of(lambda: model.generate("Hi", {"image": tmp_path / "missing.png"})) == "not-found"
    assert kind_of(lambda: model.generate("Hi", max_new_tokens=2, temperature=-1)) == "invalid-argument"
    assert kind_of(lambda: model.generate("Hi", {"image": 3})) == "invalid-argument"
    assert kind_of(lambda: model.encode("pointcloud", media["image"])) == "invalid-argument"
    assert kind_of(lambda: lego.Model.load(tiny / "model", device="tpu")) == "invalid-argument"
    assert kind_of(lambda: lego.train(tmp_path / "none.ini")) == "not-found"
    assert kind_of(lambda: lego.plugins([tmp_path / "no-such-dir"])) == "not-found"


def test_grounding_text_round_trips_and_measures_overlap():
    g = lego.grounding
    assert g.format_box([0.1, 0.2, 0.3, 0.4]) == "[0.100, 0.200, 0.300, 0.400]"
    assert g.format_span((0.14, 0.3)) == "{0.14, 0.30}"
    # One entry for all three, chosen by the number of values; it writes what parse reads back.
    assert g.format((0.14, 0.3)) == "{0.14, 0.30}"
    assert g.format([0.1, 0.2, 0.3, 0.4]) == g.format_box([0.1, 0.2, 0.3, 0.4])
    assert g.parse("the cube " + g.format([0, 0.1, 0.2, 0.5, 0.6, 0.7])).boxes[0].values == [0, 0.1, 0.2, 0.5, 0.6, 0.7]
    with pytest.raises(lego.Error) as e:
        g.format([0.1, 0.2, 0.3])
    assert e.value.kind == "invalid-argument"
    m = g.parse("A dog [0.1, 0.2, 0.3, 0.4] barks {0.20, 0.50}. The cube [0, 0, 0, 0.5, 0.5, 0.5]")
    assert [b.phrase for b in m.boxes] == ["A dog", "The cube"]
    assert m.boxes[1].values == [0, 0, 0, 0.5, 0.5, 0.5]
    assert m.spans[0].span == (0.2, 0.5) and m.spans[0].phrase == "barks"
    assert g.iou([0, 0, 0.5, 1], [0.25, 0, 0.75, 1]) == pytest.approx(1 / 3)
    assert g.iou([0, 0, 0, 0.5, 1, 1], [0.25, 0, 0, 0.75, 1, 1]) == pytest.approx(1 / 3)
    assert g.iou((0.0, 0.5), (0.25, 0.75)) == pytest.approx(1 / 3)
    with pytest.raises(lego.Error) as e:
        g.iou([0, 0, 1], [0, 0, 1])
    assert e.value.kind == "invalid-argument"
