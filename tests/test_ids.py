from __future__ import annotations

import os
import re
import threading
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billfold.kit import clock
from billfold.kit.errors import InvalidInput
from billfold.kit import ids
from billfold.kit.ids import ALPHABET, IdGenerator, has_prefix, new_id, parse_id

UTC = timezone.utc
# The process-wide generator never goes back in time, so tests that freeze the clock for
# ``new_id`` use past dates: a frozen future date would stamp every later id in the process.
PAST = datetime(2001, 2, 3, 4, 5, 6, 789123, tzinfo=UTC)
ID_SHAPE = re.compile(r"[a-z][a-z0-9]{0,7}_[0-7][0-9A-HJKMNP-TV-Z]{25}")


def body_number(value: str) -> int:
    number = 0
    for char in value.partition("_")[2]:
        number = number * 32 + ALPHABET.index(char)
    return number


def to_millisecond(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_shape():
    for prefix in ["u", "usr", "a1b2c3d4"]:
        value = new_id(prefix)
        assert ID_SHAPE.fullmatch(value) and value.startswith(prefix + "_")
        assert value.isascii() and len(value) <= 35
        assert parse_id(value)[0] == prefix


def test_ids_sort_in_generation_order_with_a_frozen_clock():
    with clock.using(clock.FrozenClock(PAST)):
        ids = [new_id("inv") for _ in range(3000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # Same millisecond: each id is the previous one plus one.
    assert all(body_number(b) - body_number(a) == 1 for a, b in zip(ids, ids[1:]))


def test_a_fresh_generator_stamps_the_frozen_time():
    generator = IdGenerator()
    with clock.using(clock.FrozenClock(PAST)):
        ids = [generator.new("usr") for _ in range(50)]
    assert {parse_id(i)[1] for i in ids} == {to_millisecond(PAST)}
    assert ids == sorted(ids)


@given(st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=30))
def test_ids_sort_by_time_as_the_clock_moves_forward(steps_ms):
    generator = IdGenerator()
    frozen = clock.FrozenClock(PAST)
    ids, times = [], []
    with clock.using(frozen):
        for step in steps_ms:
            ids.append(generator.new("evt"))
            times.append(to_millisecond(frozen.now()))
            frozen.advance(timedelta(milliseconds=step))
    assert ids == sorted(ids)
    assert [parse_id(i)[1] for i in ids] == times


def test_ids_keep_sorting_when_the_clock_is_set_back():
    frozen = clock.FrozenClock(PAST)
    with clock.using(frozen):
        first = new_id("evt")
        frozen.set(PAST - timedelta(days=365))
        second = new_id("evt")
        frozen.set(PAST - timedelta(milliseconds=1))
        third = new_id("evt")
    assert first < second < third
    assert parse_id(first)[1] == parse_id(second)[1] == parse_id(third)[1]


def test_new_id_follows_the_clock_in_use():
    generator = IdGenerator()
    with clock.using(clock.FrozenClock(PAST)):
        assert parse_id(generator.new("usr"))[1] == to_millisecond(PAST)
    later = datetime(2030, 6, 1, 12, 0, 0, 1500, tzinfo=UTC)
    with clock.using(clock.FrozenClock(later)):
        assert parse_id(generator.new("usr"))[1] == to_millisecond(later)


@given(st.datetimes(datetime(1970, 1, 1), datetime(9999, 12, 31, 23, 59, 59), timezones=st.just(UTC)))
def test_parse_id_round_trips_the_timestamp_to_the_millisecond(moment):
    generator = IdGenerator()
    with clock.using(clock.FrozenClock(moment)):
        value = generator.new("txn")
    prefix, created = parse_id(value)
    assert prefix == "txn"
    assert created == to_millisecond(moment)
    assert created.utcoffset() == timedelta(0)


def test_a_full_random_part_rolls_over_into_the_next_millisecond():
    generator = IdGenerator(random_bits=lambda bits: (1 << bits) - 1)
    with clock.using(clock.FrozenClock(PAST)):
        first, second, third = (generator.new("usr") for _ in range(3))
    assert first < second < third
    assert parse_id(second)[1] - parse_id(first)[1] == timedelta(milliseconds=1)
    assert body_number(third) - body_number(second) == 1


def test_a_clock_before_1970_is_refused():
    with clock.using(clock.FrozenClock(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC))):
        with pytest.raises(ValueError):
            IdGenerator().new("usr")


def test_many_ids_are_unique():
    ids = [new_id("usr") for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


@pytest.mark.parametrize("frozen", [False, True])
def test_ids_are_unique_across_threads_and_ordered_within_each(frozen):
    per_thread: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(per_thread))

    def work(out: list[str]) -> None:
        start.wait()
        for _ in range(2000):
            out.append(new_id("thr"))

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    with clock.using(clock.FrozenClock(PAST)) if frozen else clock.using(clock.get_clock()):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    everything = [i for out in per_thread for i in out]
    assert len(everything) == 16000 == len(set(everything))
    assert all(out == sorted(out) for out in per_thread)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_the_parents_next_id():
    with clock.using(clock.FrozenClock(PAST)):
        new_id("frk")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its next id and leave without running pytest's teardown
            os.write(write, new_id("frk").encode())
            os._exit(0)
        os.close(write)
        parent_next = new_id("frk")
        os.waitpid(pid, 0)
        with os.fdopen(read) as pipe:
            child_next = pipe.read()
    assert ID_SHAPE.fullmatch(child_next)
    assert child_next != parent_next


@pytest.mark.parametrize("prefix", ["", "Usr", "1usr", "toolong12", "us_r", "usé", "us r", None, 3])
def test_a_bad_prefix_is_a_programming_error(prefix):
    with pytest.raises(ValueError):
        new_id(prefix)
    with pytest.raises(ValueError):
        has_prefix("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", prefix)


GOOD = "usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG"


@pytest.mark.parametrize(
    "value, complaint",
    [
        ("", "no '_'"),
        ("usr01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", "no '_'"),
        ("USR_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", "prefix"),
        ("_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", "prefix"),
        ("toolong12_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG", "prefix"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEF", "26 characters"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFGH", "26 characters"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEF\n", "base32"),
        ("usr_01jd5z3q8v6w7x8y9z0abcdefg", "upper-case"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFI", "base32"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFL", "base32"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFO", "base32"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFU", "base32"),
        ("usr_81JD5Z3Q8V6W7X8Y9Z0ABCDEFG", "0-7"),  # more than 128 bits
        ("usr_7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "9999"),  # a time datetime cannot hold
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCD_FG", "base32"),
        ("usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEF٣", "base32"),
    ],
)
def test_malformed_ids_are_refused_saying_why(value, complaint):
    with pytest.raises(InvalidInput, match=re.escape(complaint)):
        parse_id(value)
    assert not has_prefix(value, "usr")


def test_non_text_is_refused():
    for value in [None, 12, b"usr_01JD5Z3Q8V6W7X8Y9Z0ABCDEFG"]:
        with pytest.raises(InvalidInput):
            parse_id(value)  # type: ignore[arg-type]
        assert not has_prefix(value, "usr")


@given(st.integers(min_value=4, max_value=len(GOOD) - 1), st.sampled_from("ILOUilouz-_ !é٣"))
def test_a_single_foreign_character_makes_an_id_malformed(position, char):
    parse_id(GOOD)
    with pytest.raises(InvalidInput):
        parse_id(GOOD[:position] + char + GOOD[position + 1 :])


@given(st.text(max_size=40))
def test_parse_id_accepts_only_the_canonical_shape(text):
    try:
        prefix, _ = parse_id(text)
    except InvalidInput:
        assert not ID_SHAPE.fullmatch(text) or text[text.index("_") + 1] == "7"
        return
    assert ID_SHAPE.fullmatch(text) and text.startswith(prefix + "_")


def test_has_prefix():
    value = new_id("cus")
    assert has_prefix(value, "cus")
    assert not has_prefix(value, "cu")
    assert not has_prefix(value, "cust")
    assert not has_prefix(value.lower(), "cus")
    assert not has_prefix("cus_", "cus")



@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_the_body_is_the_value_in_crockford_base32(value: int) -> None:
    """Checked against the plain definition: 26 digits of base 32, most significant first."""
    digits, rest = [], value
    for _ in range(26):
        rest, digit = divmod(rest, 32)
        digits.append(ALPHABET[digit])
    body = ids._encode(value)
    assert body == "".join(reversed(digits))
    assert body_number(f"x_{body}") == value
