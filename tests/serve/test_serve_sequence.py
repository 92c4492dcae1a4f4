"""Stop strings, EOS, max_tokens and streamable text of one sequence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from apidistill.serve.sampling import SamplingParams, StepChoice
from apidistill.serve.sequence import SeqState

PIECES = {1: "Hel", 2: "lo\n", 3: "\nWorld", 4: "!", 5: "\n", 6: "ab", 7: "b", 8: "a"}
EOS = 99


def text_of(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def run(ids: list[int], **kw) -> tuple[SeqState, list[str], list[int]]:
    params = SamplingParams(
        max_tokens=kw.pop("max_tokens", 50), stop_token_ids=frozenset({EOS}), **kw
    )
    st_ = SeqState(params, text_of)
    deltas, streamed = [], []
    for t in ids:
        delta, steps = st_.push(StepChoice(t, -0.5))
        deltas.append(delta)
        streamed.extend(s.token_id for s in steps)
        if st_.finish is not None:
            break
    return st_, deltas, streamed


def test_stop_string_spanning_tokens_cuts_text_and_tokens():
    st_, deltas, streamed = run([1, 2, 3, 4], stop=("\n\n",))
    fin = st_.finish
    assert fin is not None and fin.reason == "stop" and fin.stop_sequence == "\n\n"
    assert fin.text == "Hello"
    # "lo\n" holds the first character of the stop string: it is kept, "\nWorld" is not.
    assert fin.token_count == 2 and st_.token_ids == [1, 2]
    assert fin.generated == 3
    assert "".join(deltas) == "Hello"
    assert streamed == [1, 2]


def test_eos_ends_without_being_part_of_the_output():
    st_, deltas, _ = run([1, 2, EOS, 4])
    assert st_.finish is not None and st_.finish.reason == "stop"
    assert st_.finish.stop_sequence is None
    assert st_.finish.text == "Hello\n" and st_.token_ids == [1, 2]
    assert st_.finish.generated == 3  # the EOS was generated and is billed
    assert "".join(deltas) == "Hello\n"


def test_max_tokens_ends_with_length():
    st_, deltas, streamed = run([1, 2, 4, 4, 4], max_tokens=3)
    assert st_.finish is not None and st_.finish.reason == "length"
    assert st_.finish.text == "Hello\n!" and st_.token_ids == [1, 2, 4]
    assert "".join(deltas) == "Hello\n!"
    assert streamed == [1, 2, 4]


def test_text_that_may_start_a_stop_string_is_held_back():
    st_, deltas, _ = run([6, 7], stop=("bb",))
    # After "ab" the trailing "b" might begin "bb": only "a" may be streamed.
    assert deltas[0] == "a"
    assert st_.finish is not None and st_.finish.text == "a"


def test_incomplete_utf8_character_is_not_streamed_until_complete():
    raw = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b"!"}
    params = SamplingParams(max_tokens=10)
    state = SeqState(params, lambda ids: b"".join(raw[i] for i in ids).decode("utf-8", "replace"))
    out = [state.push(StepChoice(t))[0] for t in (1, 2, 3, 4)]
    assert out == ["caf", "", "é", "!"]
    assert "\ufffd" not in "".join(out)


def test_max_tokens_zero_finishes_without_tokens():
    state = SeqState(SamplingParams(max_tokens=0), text_of)
    state.end_without_tokens()
    assert state.finish is not None and state.finish.reason == "length"
    assert state.finish.text == "" and state.finish.token_count == 0


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.sampled_from(sorted(PIECES)), min_size=1, max_size=12),
    stops=st.lists(st.sampled_from(["\n\n", "lo", "b!", "World", "aa", "\n"]), max_size=2),
)
def test_streamed_text_is_exactly_the_final_text_and_never_holds_a_stop(ids, stops):
    st_, deltas, streamed = run(ids, stop=tuple(stops), max_tokens=len(ids))
    fin = st_.finish
    assert fin is not None
    full = text_of(ids[: fin.generated])
    assert "".join(deltas) == fin.text
    assert full.startswith(fin.text)
    assert not any(s in fin.text for s in stops)
    first_stop = min((full.find(s) for s in stops if s in full), default=-1)
    if first_stop >= 0:
        assert fin.reason == "stop" and fin.text == full[:first_stop]
    # The kept tokens cover the text, and by the end every kept token was streamed once.
    assert text_of(st_.token_ids).startswith(fin.text)
    assert streamed == st_.token_ids
