"""Stop strings across chunk boundaries: whatever the chunking, the emitted text is the text up to
the first stop string, and nothing of a stop string is ever emitted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from transformer.stop_strings import StopStringMatcher


def run(chunks: list[str], stop: list[str]) -> tuple[list[str], bool]:
    matcher = StopStringMatcher(stop)
    emitted = [matcher.feed(chunk) for chunk in chunks]
    emitted.append(matcher.flush())
    return emitted, matcher.stopped


def expected(text: str, stop: list[str]) -> tuple[str, bool]:
    """The text before the stop string that completes first, character by character."""
    for end in range(1, len(text) + 1):
        completed = [string for string in stop if text[:end].endswith(string)]
        if completed:
            return text[: end - max(map(len, completed))], True
    return text, False


@st.composite
def chunked_text(draw):
    text = draw(st.text(alphabet="abc\u00e9", max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[start:end] for start, end in zip(bounds, bounds[1:])]


@given(chunked_text(), st.lists(st.text(alphabet="abc\u00e9", min_size=1, max_size=4), min_size=1, max_size=4))
def test_any_chunking_gives_the_text_before_the_first_stop_string(text_and_chunks, stop):
    text, chunks = text_and_chunks
    emitted, stopped = run(chunks, stop)
    assert ("".join(emitted), stopped) == expected(text, stop)


@given(chunked_text(), st.lists(st.text(alphabet="abc", min_size=2, max_size=4), min_size=1, max_size=4))
def test_no_prefix_of_the_text_emitted_so_far_ends_inside_a_stop_string(text_and_chunks, stop):
    text, chunks = text_and_chunks
    matcher = StopStringMatcher(stop)
    shown = ""
    for chunk in chunks:
        shown += matcher.feed(chunk)
        final, _ = expected(text, stop)
        # What a client has seen is always a prefix of the final answer, never more.
        assert final.startswith(shown)


def test_a_stop_string_split_over_three_tokens_ends_the_text():
    emitted, stopped = run(["Hello, wo", "r", "ld! And more"], ["world"])
    assert "".join(emitted) == "Hello, wo"[: len("Hello, ")] and stopped


def test_held_back_text_is_released_when_no_stop_string_completes():
    matcher = StopStringMatcher(["STOP"])
    assert matcher.feed("the end is ST") == "the end is "
    assert matcher.feed("ill far") == "STill far"
    assert matcher.feed(" ST") == " "
    assert matcher.flush() == "ST"
    assert not matcher.stopped


def test_without_stop_strings_text_passes_at_once():
    matcher = StopStringMatcher([])
    assert matcher.feed("abc") == "abc"
    assert matcher.flush() == ""
