"""`lego convert` from the command line: RefCOCO refs pickled by Python's own pickle module (protocols 0, 2
and 4, as the refer toolkit's files and re-dumps of them are), the report file and summary line, seeded
determinism, and one-line errors that leave an existing output untouched."""
import json
import pickle

import pytest

from conftest import ROOT, run_lego

INSTANCES = {
    "images": [{"id": 1, "width": 640, "height": 480, "file_name": "COCO_train2014_000000000001.jpg"},
               {"id": 2, "width": 300, "height": 600, "file_name": "COCO_train2014_000000000002.jpg"}],
    "annotations": [{"id": 10, "image_id": 1, "bbox": [64.0, 48.0, 256.0, 112.0], "category_id": 1},
                    {"id": 20, "image_id": 2, "bbox": [0, 60, 300, 540], "category_id": 1},
                    {"id": 30, "image_id": 1, "bbox": [600, 10, 100, 50], "category_id": 1}],
}


def refs():
    def ref(ref_id, ann_id, split, sentences):
        return {"sent_ids": [s["sent_id"] for s in sentences], "file_name": "x.jpg", "ann_id": ann_id, "ref_id": ref_id,
                "image_id": 1, "split": split, "sentences": sentences, "category_id": 1}

    def sent(i, text):
        return {"tokens": text.split(), "raw": text.upper(), "sent_id": i, "sent": text}

    return [ref(0, 10, "train", [sent(0, "the man on the left"), sent(1, "the man on the left")]),
            ref(1, 20, "train", [sent(2, "tall tree \u00e9t\u00e9")]),
            ref(2, 30, "train", [sent(3, "dog")]),
            ref(3, 10, "testA", [sent(4, "woman")])]


@pytest.fixture
def refcoco(tmp_path):
    (tmp_path / "instances.json").write_text(json.dumps(INSTANCES))
    return tmp_path


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_refcoco_pickles_of_every_protocol_convert_the_same(refcoco, protocol):
    (refcoco / "refs.p").write_bytes(pickle.dumps(refs(), protocol=protocol))
    out, report = refcoco / "out.json", refcoco / "report.json"
    proc = run_lego("convert", "--from", "refcoco", "--in", refcoco / "refs.p", "--in", refcoco / "instances.json",
                    "--out", out, "--report", report, "--seed", 3, "--templates", ROOT / "configs" / "templates")
    assert proc.stdout.strip() == ("refcoco: 5 read, 2 written, 3 dropped "
                                   "(duplicate 1, invalid_box 1, other_split 1)")
    items = json.loads(out.read_text())
    assert [i["id"] for i in items] == ["refcoco-0-0", "refcoco-1-2"]
    assert [i["image"] for i in items] == ["COCO_train2014_000000000001.jpg", "COCO_train2014_000000000002.jpg"]
    assert [i["conversations"][1]["value"] for i in items] == ["[0.100, 0.200, 0.500, 0.375]",
                                                               "[0.250, 0.100, 0.750, 1.000]"]
    assert items[1]["conversations"][0]["value"].startswith("<image>\n")
    assert "tall tree \u00e9t\u00e9" in items[1]["conversations"][0]["value"]
    assert json.loads(report.read_text()) == {"source": "refcoco", "read": 5, "written": 2, "dropped_total": 3,
                                              "dropped": {"duplicate": 1, "invalid_box": 1, "other_split": 1}}
    # The same seed gives the same file.
    again = refcoco / "again.json"
    run_lego("convert", "--from", "refcoco", "--in", refcoco / "refs.p", "--in", refcoco / "instances.json",
             "--out", again, "--seed", 3, "--templates", ROOT / "configs" / "templates")
    assert again.read_bytes() == out.read_bytes()


def test_errors_are_one_line_and_leave_the_output_alone(refcoco):
    out = refcoco / "out.json"
    out.write_text("previous")
    (refcoco / "broken.json").write_text('{"images": [')
    (refcoco / "refs.p").write_bytes(pickle.dumps(refs(), protocol=2))
    (refcoco / "object.p").write_bytes(pickle.dumps([{"a": pickle.PickleError}], protocol=2))
    cases = [
        (["--from", "refcoco", "--in", refcoco / "missing.p", "--in", refcoco / "instances.json"], "missing.p"),
        (["--from", "refcoco", "--in", refcoco / "refs.p", "--in", refcoco / "broken.json"], "broken.json"),
        (["--from", "refcoco", "--in", refcoco / "object.p", "--in", refcoco / "instances.json"], "object.p"),
        (["--from", "didemo", "--in", refcoco / "instances.json"], "instances.json"),
        (["--from", "nope", "--in", refcoco / "instances.json"], "nope"),
    ]
    for args, needle in cases:
        proc = run_lego("convert", *args, "--out", out, check=False)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and needle in proc.stderr, proc.stderr
        assert out.read_text() == "previous"
    proc = run_lego("convert", "--from", "refcoco", "--out", out, check=False)
    assert proc.returncode == 2 and "--in" in proc.stderr
