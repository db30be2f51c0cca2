"""Type stubs of lego.grounding: the box and span text of answers."""
from collections.abc import Sequence

class BoxMention:
    phrase: str
    values: list[float]
    begin: int
    end: int

class SpanMention:
    phrase: str
    span: tuple[float, float]
    begin: int
    end: int

class Mentions:
    boxes: list[BoxMention]
    spans: list[SpanMention]

def parse(text: str) -> Mentions: ...
def format_box(box: Sequence[float]) -> str: ...
def format_span(span: tuple[float, float]) -> str: ...
def format(values: Sequence[float]) -> str: ...
def iou(a: Sequence[float], b: Sequence[float]) -> float: ...
