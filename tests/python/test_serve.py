"""`lego serve` through the official `openai` client: each medium streamed and not, the grounding fields equal to
`lego infer --json` on the same input and seed, concurrent requests answered as they would be alone, and bad
requests refused with a 4xx (or 503) naming the field while the server stays up."""
import base64
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import ROOT, lego_bin, run_lego
from snippets import fences

openai = pytest.importorskip("openai")

# SynthGround's own phrasings, which the trained model has seen.
QUESTIONS = {"image": "Detect the triangle and give its box.", "video": "Between which times does the red circle move?",
             "sound": "Show me the source of the sound."}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".mp4": "video/mp4", ".webm": "video/webm", ".avi": "video/avi"}


@pytest.fixture(scope="module")
def trained(tiny):
    """The tiny model trained on its SynthGround rows (every part, 150 steps, about 15 s) until its answers carry boxes
    and spans in the released format."""
    synth = tiny / "synth"
    (tiny / "serve-stage.ini").write_text(
        "[model]\ndir = model\n[data]\n"
        f"train = {synth}/train-rec.json {synth}/train-temporal.json {synth}/train-sound_localization.json\n"
        "max_length = 512\n[train]\nout = serve-run\nbatch_size = 4\nmax_steps = 150\nlog_every = 10\nseed = 1\n"
        "[optim]\nlr = 1e-3\n[stage]\nname = serve\ntrain = encoder adapter llm\n")
    if not (tiny / "serve-run" / "model" / "model.ini").exists():
        run_lego("train", "--config", tiny / "serve-stage.ini")
    return tiny / "serve-run" / "model"


class Server:
    def __init__(self, model, *flags):
        self.model = model
        self.proc = subprocess.Popen([str(lego_bin()), "serve", "--model", str(model), "--port", "0", *map(str, flags)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"lego serve exited ({self.proc.wait()}): {''.join(self.log)}")
            self.log.append(line)
            m = re.search(r"on http://([\d.]+):(\d+)/", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            raise AssertionError("lego serve did not start")
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.url = f"http://{self.host}:{self.port}"

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def post(self, path, body, headers=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return r.status, r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def server(trained):
    s = Server(trained, "--max-batch", 4, "--max-queue", 64, "--max-upload-mb", 8)
    yield s
    assert s.stop() == 0, "".join(s.log)


def part(path: Path):
    data = base64.b64encode(path.read_bytes()).decode()
    if path.suffix == ".wav":
        return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    mime = MIME[path.suffix]
    kind = "image_url" if mime.startswith("image/") else "video_url"
    return {"type": kind, kind: {"url": f"data:{mime};base64,{data}"}}


def messages(path, question):
    return [{"role": "user", "content": [part(path), {"type": "text", "text": question}]}]


def infer_json(model, kind, path, question, max_tokens, seed=0, temperature=0.0):
    out = run_lego("infer", "--model", model, "--media", f"{kind}={path}", "--prompt", question, "--json",
                   "--max-new-tokens", max_tokens, "--seed", seed, "--temperature", temperature).stdout
    return json.loads(out)


@pytest.mark.parametrize("kind", ["image", "video", "sound"])
def test_each_medium_answers_as_lego_infer_does(server, trained, media, kind):
    client = server.client()
    reply = client.chat.completions.create(model="lego", messages=messages(media[kind], QUESTIONS[kind]),
                                           temperature=0, max_tokens=48, seed=0)
    expected = infer_json(trained, kind, media[kind], QUESTIONS[kind], 48)
    assert reply.choices[0].message.content == expected["text"]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(expected["prompt_token_ids"])
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    grounding = reply.model_extra["grounding"]
    assert grounding == {"boxes": expected["boxes"], "spans": expected["spans"]}

    # The same, streamed: the deltas make the text, the last chunk carries the grounding.
    chunks = list(client.chat.completions.create(model="lego", messages=messages(media[kind], QUESTIONS[kind]),
                                                 temperature=0, max_tokens=48, seed=0, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected["text"]
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason
    assert chunks[-1].model_extra["grounding"] == grounding


def test_the_trained_model_grounds_in_replies(server, media):
    """The grounding fields are not empty lists by accident: boxes come back for the picture, spans for the video,
    mapped onto the uploaded medium (pixels, seconds)."""
    client = server.client()
    image = client.chat.completions.create(model="lego", messages=messages(media["image"], QUESTIONS["image"]),
                                           temperature=0, max_tokens=48).model_extra["grounding"]
    video = client.chat.completions.create(model="lego", messages=messages(media["video"], QUESTIONS["video"]),
                                           temperature=0, max_tokens=48).model_extra["grounding"]
    assert image["boxes"], image
    assert all(b["box_px"] and b["medium"] == 0 for b in image["boxes"])
    assert video["spans"], video
    assert all(s["seconds"] and s["seconds"][0] <= s["seconds"][1] for s in video["spans"])


def test_a_part_may_name_its_modality(server, media):
    """video/mp4 goes to the modality called video, but the sound modality reads mp4 too: the part's `modality`
    field picks it (as --media sound=FILE), which then finds no audio stream in SynthGround's silent clip, as
    `lego infer` does."""
    content = [dict(part(media["video"]), modality="sound"), {"type": "text", "text": "What do you hear?"}]
    got, _, raw = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}]})
    assert got == 400 and "no audio stream" in json.loads(raw)["error"]["message"], raw
    assert "/" not in json.loads(raw)["error"]["message"].split("medium-1.mp4")[0].split("): ")[-1]  # no server paths
    cli = run_lego("infer", "--model", server.model, "--media", f"sound={media['video']}", "--prompt", "x", check=False)
    assert cli.returncode != 0 and "no audio stream" in cli.stderr
    content[0]["modality"] = "smell"
    got, _, raw = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}]})
    assert got == 400 and json.loads(raw)["error"]["param"] == "messages[0].content[0].modality", raw


def test_concurrent_requests_each_answered_once_as_alone(server, media):
    """24 clients at once, mixed media and seeds, sampled: every reply equals the one the same request gets alone."""
    client = server.client()
    kinds = ["image", "video", "sound"]
    jobs = [(kinds[i % 3], i) for i in range(24)]

    def ask(job):
        kind, seed = job
        r = client.chat.completions.create(model="lego", messages=messages(media[kind], QUESTIONS[kind]),
                                           temperature=0.8, top_p=0.9, max_tokens=16 + seed % 5, seed=seed)
        return r.choices[0].message.content

    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(ask, jobs))
    alone = [ask(job) for job in jobs[:6]]
    assert together[:6] == alone
    assert len(set(together)) > 3  # the seeds matter


def test_models_health_and_metrics(server):
    server.client().chat.completions.create(model="lego", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    status, body = server.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["model"]
    status, text = server.get("/metrics")
    assert status == 200
    for name in ("lego_http_responses_total", "lego_queue_depth", "lego_completion_tokens_total",
                 "lego_decode_tokens_per_second", "lego_request_seconds_bucket"):
        assert name in text
    assert re.search(r'lego_http_responses_total\{status="200"\} [1-9]', text)
    status, page = server.get("/")
    assert status == 200 and "<html" in page and "/v1/chat/completions" in page
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page) and "@import" not in page  # no external assets


def png(width, height):
    import zlib

    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    raw = b"".join(b"\x00" + b"\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def image_request(url):
    return {"model": "lego", "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "hi"}]}]}


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-40}, 400, "temperature"),
    ({}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "a " * 3000}]}, 400, "messages"),  # past the tiny model's context
    ({"messages": [{"role": "user", "content": "a" * 2_000_000}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop[0]"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 7}}]}]}, 400,
     "messages[0].content[0].image_url.url"),
    (image_request("/etc/passwd"), 400, "messages[0].content[0].image_url.url"),
    (image_request("file:///etc/passwd"), 400, "messages[0].content[0].image_url.url"),
    (image_request("http://127.0.0.1:1/x.png"), 400, "messages[0].content[0].image_url.url"),
    (image_request("data:image/png;base64,bm90IGFuIGltYWdl"), 400, "messages"),
    (image_request("data:image/png;base64,!!!!"), 400, "messages[0].content[0].image_url.url"),
    (image_request("data:text/plain;base64,aGk="), 400, "messages[0].content[0].image_url.url"),
])
def test_bad_requests_are_refused_with_the_field(server, body, status, param):
    got, _, raw = server.post("/v1/chat/completions", body)
    assert got == status, raw
    error = json.loads(raw)["error"]
    assert error["message"]
    assert ".so" not in error["message"] and "lego-serve-" not in error["message"], error  # no server files named
    if param is not None:
        assert error["param"] == param, error


def peak_rss_kib(proc):
    status = Path(f"/proc/{proc.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_a_one_by_a_million_png_is_answered_without_building_its_square(server):
    """lego reads such a picture (as `lego infer` does: the padded square is never built), so the server answers it
    rather than refusing it, and its memory stays that of the model."""
    got, _, raw = server.post("/v1/chat/completions",
                              image_request("data:image/png;base64," + base64.b64encode(png(1, 1_000_000)).decode()))
    assert got == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] is not None
    assert peak_rss_kib(server.proc) < 3_000_000
    assert server.get("/health")[0] == 200


def test_a_huge_body_is_refused_before_it_is_read(server):
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2147483648\r\n\r\n{\"messages\": ")
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}")
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 400"), reply
    # Compressed, chunked or doubly sized bodies are refused before they are read.
    import gzip

    bomb = gzip.compress(b'{"messages": [{"role": "user", "content": "' + b"a" * 50_000_000 + b'"}]}')
    for headers, body, status in ((b"Content-Encoding: gzip\r\nContent-Length: %d\r\n" % len(bomb), bomb, 415),
                                  (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n", 400),
                                  (b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}", 400),
                                  (b"", b"", 411)):
        with socket.create_connection((server.host, server.port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers + b"\r\n" + body)
            reply = s.recv(4096).decode(errors="replace")
        assert reply.startswith(f"HTTP/1.1 {status}"), (headers, reply)
    assert peak_rss_kib(server.proc) < 3_000_000


def test_idle_connections_do_not_stop_the_server(server, media):
    idle = []
    try:
        for _ in range(1000):
            idle.append(socket.create_connection((server.host, server.port), timeout=30))
        start = time.time()
        r = server.client().chat.completions.create(model="lego", messages=messages(media["image"], "hi"), max_tokens=4)
        assert r.choices[0].message.content is not None
        assert time.time() - start < 60
    finally:
        for s in idle:
            s.close()
    assert server.get("/health")[0] == 200


def test_a_full_queue_answers_503_with_retry_after(trained, media):
    s = Server(trained, "--max-batch", 1, "--max-queue", 1)
    try:
        body = {"model": "lego", "max_tokens": 64, "messages": messages(media["image"], "hi"),
                "stop": ["@@never@@"]}
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: s.post("/v1/chat/completions", body), range(8)))
        statuses = sorted(r[0] for r in results)
        assert 200 in statuses and 503 in statuses, statuses
        assert all(r[1].get("Retry-After") for r in results if r[0] == 503)
    finally:
        assert s.stop() == 0


def test_api_key_and_graceful_shutdown(trained, media):
    s = Server(trained, "--api-key", "sesame", "--max-batch", 2)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        client = s.client("sesame")
        assert client.models.list().data
        # SIGTERM while a long streamed answer is in flight: it still ends properly, then the server exits 0.
        stream = client.chat.completions.create(model="lego", messages=messages(media["image"], "hi"), max_tokens=120,
                                                stream=True, stop=["@@never@@"])
        first = next(iter(stream))
        s.proc.send_signal(signal.SIGTERM)
        rest = list(stream)
        assert rest and rest[-1].choices[0].finish_reason in ("length", "stop")
        assert first.choices[0].delta.role == "assistant"
    finally:
        assert s.stop() == 0, "".join(s.log)


def test_the_docs_client_example_runs_and_its_reply_has_the_documented_shape(server, media, capsys):
    """docs/serve.md's Python block, run against this server and a SynthGround picture; the reply's grounding has
    the fields of the docs' JSON example."""
    doc = ROOT / "docs" / "serve.md"
    [code] = [f.body for f in fences(doc) if f.lang == "python"]
    code = code.replace("http://127.0.0.1:8080/v1", server.url + "/v1").replace('"scene.png"', repr(str(media["image"])))
    namespace = {}
    exec(compile(code, str(doc), "exec"), namespace)
    assert capsys.readouterr().out.startswith(namespace["reply"].choices[0].message.content + "\n")
    [example] = [json.loads(f.body) for f in fences(doc) if f.lang == "json"]
    grounding = namespace["reply"].model_extra["grounding"]
    assert set(grounding) == set(example["grounding"])
    for kind in ("boxes", "spans"):
        documented = set(example["grounding"][kind][0])
        assert all(set(item) == documented for item in grounding[kind]), (kind, grounding[kind])


def test_the_web_page_draws_the_reply_box_over_the_picture(server, media, tmp_path):
    """Headless Chromium loads the page, uploads the picture, asks, and the drawn box sits where the reply's pixel
    box puts it on the displayed picture; the screenshot shows the box's colour along its edge."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path="/usr/bin/chromedriver"))
    try:
        driver.get(server.url + "/")
        driver.find_element(By.ID, "files").send_keys(str(media["image"]))
        question = driver.find_element(By.ID, "question")
        question.clear()
        question.send_keys("Where is the red ball?")
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("const i = document.querySelector('#media img'); return i && i.complete && i.naturalWidth > 0"))
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 300).until(lambda d: d.execute_script("return document.body.dataset.answered === '1' || document.getElementById('error').textContent !== ''"))
        assert driver.find_element(By.ID, "error").text == ""
        grounding = driver.execute_script("return window.legoGrounding")
        # The page's request is the API's: the same question, greedy, gives the same boxes.
        reply = server.client().chat.completions.create(model="lego", messages=messages(media["image"], "Where is the red ball?"),
                                                        temperature=0, max_tokens=512)
        assert grounding == reply.model_extra["grounding"]
        assert driver.find_element(By.ID, "answer").text == reply.choices[0].message.content.strip()
        boxes = driver.find_elements(By.CSS_SELECTOR, ".lego-box")
        assert len(boxes) == len([b for b in grounding["boxes"] if b["medium"] == 0]) >= 1
        img = driver.execute_script("const r = document.querySelector('#media img').getBoundingClientRect();"
                                    "const i = document.querySelector('#media img');"
                                    "return [r.left, r.top, r.width, r.height, i.naturalWidth, i.naturalHeight]")
        left, top, width, height, nat_w, nat_h = img
        rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]", boxes[0])
        px = grounding["boxes"][0]["box_px"]
        expected = [left + px[0] / nat_w * width, top + px[1] / nat_h * height,
                    left + px[2] / nat_w * width, top + px[3] / nat_h * height]
        assert all(abs(a - b) <= 1.5 for a, b in zip(rect, expected)), (rect, expected)
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        from PIL import Image

        picture = Image.open(shot).convert("RGB")
        scale = picture.width / driver.execute_script("return window.innerWidth")
        # Along the box's left edge (3 px wide), half way down: the box's colour, #e0245e.
        x, y = int((rect[0] + 1) * scale), int((rect[1] + rect[3]) / 2 * scale)
        r, g, b = picture.getpixel((x, y))
        assert abs(r - 0xE0) < 40 and abs(g - 0x24) < 40 and abs(b - 0x5E) < 40, (x, y, (r, g, b))
    finally:
        driver.quit()
