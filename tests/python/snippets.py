"""The fenced code blocks of the project's documentation (README.md, docs/*.md and the examples' READMEs),
for the tests that compile or run them: test_docs.py, test_pointcloud.py and tests/e2e/out_of_tree_plugin.sh
(through `python3 tests/python/snippets.py FILE LANG [INDEX]`, which prints one block)."""
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every fence names one of these; `text` is for pictures (a diagram), not code.
LANGUAGES = ("python", "sh", "ini", "json", "cmake", "text")


@dataclass
class Fence:
    file: Path
    line: int
    lang: str
    body: str

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def doc_files():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*/README.md"))]
    return [f for f in files if f.exists()]


def fences(file: Path):
    """The blocks of one file, indented ones (inside a list item) included, their indentation removed."""
    text = file.read_text()
    out = []
    for m in re.finditer(r"^( *)```(\S*)[ \t]*\n(.*?)^\1```[ \t]*$", text, re.S | re.M):
        indent = len(m.group(1))
        body = "".join(l[indent:] if l[:indent].strip() == "" else l for l in m.group(3).splitlines(True))
        out.append(Fence(file, text.count("\n", 0, m.start()) + 1, m.group(2), body))
    return out


def all_fences():
    return [f for file in doc_files() for f in fences(file)]


def shell_commands(body: str):
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: snippets.py DOC LANG [INDEX]   (prints the INDEX-th LANG block of DOC, default 0)")
    doc, lang = ROOT / sys.argv[1], sys.argv[2]
    blocks = [f for f in fences(doc) if f.lang == lang]
    index = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    if index >= len(blocks):
        sys.exit(f"{sys.argv[1]} has {len(blocks)} {lang} block(s), not {index + 1}")
    sys.stdout.write(blocks[index].body)
