#!/usr/bin/env bash
# An out-of-tree plugin built against the *installed* SDK (find_package(Lego)) loads and answers like an
# in-tree one: `lego infer --media pooled=FILE`, `--media FILE` (routed by its extension) and the
# `--pooled FILE` shorthand the plugin adds all put its tokens into the prompt.
# Usage: out_of_tree_plugin.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
# The plugin is built by the CMake file of docs/plugin-sdk.md (read from the doc by tests/python/snippets.py),
# with the example's source as its mine.cpp.
mkdir -p "$work/mine"
python3 "$src/tests/python/snippets.py" docs/plugin-sdk.md cmake 0 >"$work/mine/CMakeLists.txt"
cp "$src/examples/pooled_image/pooled_image.cpp" "$work/mine/mine.cpp"
cmake -S "$work/mine" -B "$work/plugin" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DLego_DIR="$work/prefix/lib/cmake/Lego" >/dev/null
cmake --build "$work/plugin" >/dev/null
lego=$work/prefix/bin/lego
out=$("$lego" plugins --json --plugin-dir "$work/plugin")
echo "$out" | grep -q '"modality": "pooled"' || { echo "FAIL: pooled plugin not listed"; echo "$out"; exit 1; }
echo "$out" | python3 -c '
import json, sys
records = {r["modality"]: r for r in json.load(sys.stdin) if r["modality"]}
for name, tokens in (("pooled", 16), ("image", 576)):
    r = records.get(name)
    assert r and r["state"] == "loaded" and r["tokens"] == tokens, f"{name}: {r}"
print("out-of-tree plugin loaded next to the installed image plugin")
'
# A model with only the pooled modality, its sections those of docs/plugin-sdk.md (grid 4: 16 tokens), and
# a picture for it.
cat >"$work/pooled.ini" <<INI
[llm]
architecture = llama
hidden_size = 32
intermediate_size = 64
num_layers = 1
num_heads = 4
max_position = 256
[tokenizer]
corpus = $src/configs/corpus/tiny.txt
vocab_size = 512
added_tokens = <im_patch> <im_start> <im_end>
INI
python3 "$src/tests/python/snippets.py" docs/plugin-sdk.md ini 0 >>"$work/pooled.ini"
"$lego" init-model --config "$work/pooled.ini" --out "$work/model" --plugin-dir "$work/plugin" --seed 3 >/dev/null
python3 - "$work/scene.bmp" <<'PY'
import struct, sys
w, h = 40, 24
rows = b"".join(bytes([(x * 6) % 256, (y * 10) % 256, 200]) * 1 for y in range(h) for x in range(w))
pixels = b"".join(rows[y * w * 3:(y + 1) * w * 3] + b"\0" * ((4 - w * 3 % 4) % 4) for y in range(h))
header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
open(sys.argv[1], "wb").write(header + info + pixels)
PY
ask() { "$lego" infer --model "$work/model" --plugin-dir "$work/plugin" --prompt "Where is it?" --max-new-tokens 4 --json "$@"; }
named=$(ask --media "pooled=$work/scene.bmp")
routed=$(ask --media "$work/scene.bmp")
short=$(ask --pooled "$work/scene.bmp")
patch=$("$lego" tokenize --model "$work/model" --no-bos --text "<im_patch>")
python3 - "$patch" "$named" "$routed" "$short" <<'PY'
import json, sys
patch = json.loads(sys.argv[1]) if sys.argv[1].startswith("[") else [int(t) for t in sys.argv[1].split()]
patch = patch[0] if isinstance(patch[0], int) else patch[0][0]
answers = [json.loads(a) for a in sys.argv[2:]]
first = answers[0]
assert first["prompt_token_ids"].count(patch) == 16, f"want 16 patch tokens ({patch}) in {first['prompt_token_ids']}"
for a in answers:
    assert a["prompt_token_ids"] == first["prompt_token_ids"], "the three ways differ"
    assert a["token_ids"] == first["token_ids"], "the three answers differ"
print("pooled answered through --media NAME=PATH, --media PATH and --pooled PATH:", first["text"][:40])
PY
