"""The pure parts of the benchmarks' measuring tools: percentiles, the YCSB Zipfian key
choice, the Redis protocol, the rate lists of `--latency-at`, argument parsing and the
report formatting; and the load generator against the bare server, on real sockets."""

from __future__ import annotations

import collections
import importlib
import math
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from kvactors.launcher import free_port_block

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import each other by name

import _latency  # noqa: E402
import _loadgen  # noqa: E402
import _redis  # noqa: E402
import _ycsb  # noqa: E402
import bare_server  # noqa: E402
import memory  # noqa: E402
import replicated  # noqa: E402

# -- percentiles and measurements ----------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert _loadgen.percentile(values, 0.50) == 50.0
    assert _loadgen.percentile(values, 0.99) == 99.0
    assert _loadgen.percentile(values, 1.0) == 100.0
    assert _loadgen.percentile([7.0], 0.99) == 7.0
    # 10 values: the p99 is the largest (rank ceil(9.9) = 10), p50 the fifth.
    assert _loadgen.percentile([float(v) for v in range(1, 11)], 0.99) == 10.0
    assert _loadgen.percentile([float(v) for v in range(1, 11)], 0.50) == 5.0
    assert math.isnan(_loadgen.percentile([], 0.5))


def test_a_measurement_reports_rate_and_percentiles_in_milliseconds() -> None:
    m = _loadgen.Measurement(4, 1, 2.0, [0.001, 0.002, 0.003, 0.010])
    assert m.rate == 2.0
    assert m.p50_ms == pytest.approx(2.0)
    assert m.p99_ms == pytest.approx(10.0)


def test_failures_are_counted_by_error_code_most_frequent_first() -> None:
    errors = collections.Counter({"overloaded": 3, "timeout": 1_200})
    assert _loadgen.error_counts(errors) == "timeout 1,200, overloaded 3"
    assert _loadgen.error_counts(collections.Counter()) == "none"


def test_inflight_is_split_as_evenly_as_it_goes() -> None:
    assert _loadgen.split(32, 3) == [11, 11, 10]
    assert _loadgen.split(256, 3) == [86, 85, 85]
    assert sum(_loadgen.split(7, 7)) == 7


# -- YCSB ---------------------------------------------------------------------------------


def test_zipfian_ranks_follow_their_probabilities() -> None:
    zipf = _ycsb.Zipfian(1000, random.Random(7))
    samples = 40_000
    counts = collections.Counter(zipf.next() for _ in range(samples))
    assert min(counts) >= 0 and max(counts) < 1000
    for rank in (0, 1):  # exact by construction; later ranks follow an approximation
        expected = zipf.probability(rank) * samples
        # Five standard deviations of a binomial count: a wrong formula misses by far more.
        assert abs(counts[rank] - expected) < 5 * math.sqrt(expected), rank
    assert counts[1] > counts[2] > counts[10] > counts[500]
    assert sum(zipf.probability(r) for r in range(1000)) == pytest.approx(1.0)


def test_a_zipfian_needs_two_items() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        _ycsb.Zipfian(1, random.Random())


def test_fnv_hash_is_fnv1a_over_the_eight_little_endian_bytes() -> None:
    def reference(value: int) -> int:
        hashed = 0xCBF29CE484222325
        for byte in value.to_bytes(8, "little"):
            hashed = ((hashed ^ byte) * 0x100000001B3) % 2**64
        return hashed

    rng = random.Random(3)
    for value in [0, 1, 255, 256, 2**40 + 5, *(rng.getrandbits(63) for _ in range(20))]:
        assert _ycsb.fnv1a_64(value) == reference(value)


def test_scrambled_keys_stay_in_range_and_spread_the_popular_ones() -> None:
    keys = _ycsb.ScrambledZipfian(10_000, random.Random(5))
    counts = collections.Counter(keys.next() for _ in range(20_000))
    assert all(0 <= key < 10_000 for key in counts)
    hottest = [key for key, _ in counts.most_common(3)]
    assert hottest != [0, 1, 2]  # not the first keys, as a plain Zipfian would give
    # Skewed: the hottest key alone takes several per cent of the operations.
    assert counts.most_common(1)[0][1] > 0.03 * 20_000


def test_workload_operations_are_seeded_and_mixed_as_the_workload_says() -> None:
    first = _ycsb.operations(_ycsb.WORKLOAD_B, 1000, 20_000, seed=11)
    assert first == _ycsb.operations(_ycsb.WORKLOAD_B, 1000, 20_000, seed=11)
    assert first != _ycsb.operations(_ycsb.WORKLOAD_B, 1000, 20_000, seed=12)
    reads = sum(is_read for is_read, _ in first) / len(first)
    assert reads == pytest.approx(0.95, abs=0.01)
    mixed = _ycsb.operations(_ycsb.WORKLOAD_A, 1000, 20_000, seed=11)
    assert sum(is_read for is_read, _ in mixed) / len(mixed) == pytest.approx(0.5, abs=0.02)
    assert _ycsb.WORKLOAD_A.label == "YCSB A (50/50 read/update)"
    assert _ycsb.WORKLOAD_B.label == "YCSB B (95/5 read/update)"


def test_an_operation_cycle_starts_again_when_it_runs_out() -> None:
    cycle = _ycsb.OperationCycle(["a", "b"])
    assert [cycle() for _ in range(5)] == ["a", "b", "a", "b", "a"]
    with pytest.raises(ValueError):
        _ycsb.OperationCycle([])


def test_a_plan_names_its_records_as_the_pysyncobj_node_does() -> None:
    plan = _ycsb.Plan(records=3, inflight=8, count=10, seed=1)
    assert plan.keys() == ["user0", "user1", "user2"]
    assert all(0 <= index < 3 for _, index in plan.operations(_ycsb.WORKLOAD_A))


# -- the Redis protocol -------------------------------------------------------------------


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert _redis.resp("SET", "k", b"\x00v") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\x00v\r\n"


def test_replies_are_parsed_one_at_a_time() -> None:
    buffer = b"+OK\r\n:1\r\n$3\r\nabc\r\n$-1\r\n-ERR no\r\n"
    parsed = []
    while buffer:
        result = _redis.parse_reply(buffer)
        assert result is not None
        reply, buffer = result
        parsed.append(reply)
    assert parsed == ["OK", 1, b"abc", None, "ERR no"]
    assert isinstance(parsed[-1], _redis.RedisError)


@pytest.mark.parametrize("partial", [b"", b"+OK", b"$5\r\nab", b"$5\r\nabcde\r"])
def test_an_incomplete_reply_waits_for_more(partial: bytes) -> None:
    assert _redis.parse_reply(partial) is None


def test_a_bulk_string_may_hold_crlf() -> None:
    assert _redis.parse_reply(b"$4\r\na\r\nb\r\n+OK\r\n") == (b"a\r\nb", b"+OK\r\n")


def test_outcomes_of_writes_and_reads() -> None:
    write = _redis.write_request("k", b"v")
    read = _redis.read_request("k")
    assert write.replies == 2 and read.replies == 1
    assert _redis.outcome(write, ["OK", 1]) == "ok"
    assert _redis.outcome(write, ["OK", 0]) == "failed"  # no replica had it in time
    assert _redis.outcome(write, [_redis.RedisError("ERR"), 1]) == "failed"
    assert _redis.outcome(read, [b"v"]) == "ok"
    assert _redis.outcome(read, [None]) == "missing"
    assert _redis.outcome(read, [_redis.RedisError("ERR")]) == "failed"


# -- --latency-at -------------------------------------------------------------------------


def test_a_rate_list_may_go_on_to_the_peak() -> None:
    assert _latency.parse_rates("1000,2000,3000") == ([1000.0, 2000.0, 3000.0], None)
    assert _latency.parse_rates("1000,2000,3000,...") == ([1000.0, 2000.0, 3000.0], 1000.0)
    assert _latency.parse_rates("500,...") == ([500.0], 500.0)
    assert _latency.schedule([1000.0, 2000.0], 1000.0, peak=4500.0) == [1000, 2000, 3000, 4000]
    assert _latency.schedule([1000.0, 2000.0], None, peak=500.0) == [1000, 2000]
    assert _latency.schedule([500.0], 500.0, peak=100.0) == [500.0]


@pytest.mark.parametrize("text", ["", "...", "a,b", "0,100", "2000,1000,...", "1000,1000,..."])
def test_a_bad_rate_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        _latency.parse_rates(text)


def measurement(rate: float, p50_ms: float, p99_ms: float, failed: int = 0) -> _loadgen.Measurement:
    """100 latencies with that p50 and p99 over one second, at `rate`."""
    latencies = [p50_ms / 1000] * 60 + [p99_ms / 1000] * 40
    return _loadgen.Measurement(round(rate), failed, 1.0, [*latencies[:99], 9.9])


def test_the_latency_table_has_a_row_per_rate_and_marks_rates_above_the_peak() -> None:
    curve = _latency.Curve(
        [
            _latency.Point(1000, [measurement(1000, 1, 2), measurement(1000, 1, 4)],
                           [measurement(1000, 0.5, 1)] * 2),
            _latency.Point(5000, [measurement(4000, 9, 30, failed=3)] * 2,
                           [measurement(5000, 0.6, 1.5)] * 2),
        ],
        peaks=[measurement(4200, 20, 40), measurement(4400, 20, 40)],
    )  # fmt: skip
    header, low, high = _latency.table(curve)
    assert "ping p99" in header
    assert low.split()[:6] == ["1,000", "1,000", "1.00", "3.00", "0.50", "1.00"]
    assert low.endswith("2.0 4.0")  # each run's put p99
    assert high.split()[0] == "5,000*"  # above the median peak of 4,300
    assert high.split()[6] == "6"  # failures summed over the runs


# -- replicated.py's options and report ---------------------------------------------------


def test_quick_is_one_short_run_with_few_records() -> None:
    args = replicated.parse_args(["--quick"])
    assert (args.runs, args.seconds, args.warmup, args.ycsb_records) == (1, 1.5, 0.25, 2_000)
    assert replicated.parse_args(["--quick", "--seconds", "1"]).seconds == 1.0
    full = replicated.parse_args([])
    assert (full.runs, full.seconds, full.warmup) == (3, 3.0, 0.5)
    assert (full.kvactors_inflight, full.ycsb_inflight) == (256, 256)
    assert replicated.ycsb_plan(full, 0) is not None
    assert replicated.ycsb_plan(replicated.parse_args(["--no-ycsb"]), 0) is None


def test_a_bad_latency_list_stops_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        replicated.parse_args(["--latency-at", "1000,fast"])
    assert "rates are numbers" in capsys.readouterr().err


def test_a_ratio_of_systems_not_run_says_so() -> None:
    ours = [measurement(2000, 1, 2), measurement(3000, 1, 2)]
    theirs = [measurement(1000, 1, 2), measurement(1000, 1, 2)]
    assert replicated.ratio_line("x / y", ours, theirs) == "x / y: 2.50 (runs: 2.00 3.00)"
    assert replicated.ratio_line("x / Redis", ours, []) == "x / Redis: not run"


def test_a_table_row_gives_medians_and_each_run() -> None:
    line = replicated.row("kvactors get", [measurement(1000, 1, 2), measurement(3000, 1, 4)])
    assert line.startswith("kvactors get")
    assert line.split()[2:] == ["2,000", "1.00", "3.00", "0", "1,000", "3,000"]


# -- memory.py ----------------------------------------------------------------------------


def test_memory_values_are_distinct_and_of_the_size_asked() -> None:
    values = [memory.value_of(i, 100) for i in range(1000)]
    assert {len(value) for value in values} == {100}
    assert len(set(values)) == 1000
    chunks = list(memory.chunks(2500, 1000, 10))
    assert [len(chunk) for chunk in chunks] == [1000, 1000, 500]
    assert memory.key_of(7) in chunks[0]


def test_the_memory_report_gives_bytes_per_key_against_the_dict() -> None:
    footprints = {
        "dict": memory.Footprint(1000, 10_000_000, 10_230_000, 0.1, 1000),
        "embedded": memory.Footprint(1000, 50_000_000, 50_480_000, 1.0, 1000, 247_000),
    }
    lines = memory.report_lines(footprints, 100)
    assert lines[1].split()[3:5] == ["230", "1.00"]
    assert lines[2].split()[3:7] == ["480", "2.09", "1,000", "247"]
    assert lines[-1].startswith("embedded / dict: 2.09; target <= 2: NOT met")
    footprints["embedded"] = memory.Footprint(1000, 0, 400_000, 1.0, 999)
    assert memory.report_lines(footprints, 100)[-1].split()[3:6] == ["1.74;", "target", "<="]
    assert memory.missing_keys(footprints) == ["embedded holds 999 of 1,000 keys"]


def test_memory_options() -> None:
    assert memory.parse_args([]).keys == 1_000_000
    assert memory.parse_args(["--keys", "500"]).keys == 500
    with pytest.raises(SystemExit):
        memory.parse_args(["--keys", "0"])


def test_a_dict_is_measured_in_a_fresh_process() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    footprint = memory.in_fresh_process("dict", 20_000, 100)
    assert footprint.stored_keys == 20_000
    # Each entry holds a 100-byte value, its key and a slot of the table: more than the
    # value, less than the few hundred bytes kvactors takes.
    assert 150 < footprint.per_key < 400


def test_rss_is_read_from_proc() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("no /proc")
    before = memory.rss_bytes()
    hold = bytearray(50_000_000)
    hold[::4096] = b"x" * len(hold[::4096])  # touch every page, so it is resident
    assert memory.rss_bytes() - before > 40_000_000
    del hold


# -- the load generator, on real sockets --------------------------------------------------


@pytest.fixture
def bare_endpoint() -> Iterator[str]:
    """benchmarks/bare_server.py serving in a thread (it answers put, get, ping)."""
    endpoint = f"tcp://127.0.0.1:{free_port_block(1)}"
    server = threading.Thread(target=bare_server.serve, args=(endpoint,), daemon=True)
    server.start()
    yield endpoint
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(msgpack.packb({"op": "stop"}))
    sock.poll(5000)
    sock.close()
    server.join(5)


def test_the_load_keeps_what_it_wrote_and_reads_it_back(bare_endpoint: str) -> None:
    load = _loadgen.DealerLoad([bare_endpoint, bare_endpoint])
    try:
        puts = load.closed_loop("put", 8, 0.0, 0.2)
        assert puts.completed > 0 and puts.failed == 0
        assert len(load.written) >= puts.completed
        gets = load.closed_loop("get", 8, 0.0, 0.2)
        assert gets.completed > 0 and gets.missing == 0
        loaded = load.put_all(["user0", "user1", "user2"], inflight=2)
        assert (loaded.completed, loaded.failed) == (3, 0)
        load.mixed = _ycsb.OperationCycle([(True, "user1"), (False, "user2"), (True, "nope")])
        mixed = load.closed_loop("mixed", 3, 0.0, 0.2)
        # A third of the operations read a key nobody wrote: they count as missing.
        assert mixed.missing == pytest.approx(mixed.completed / 3, rel=0.2)
    finally:
        load.close()


def test_open_loop_latency_runs_from_the_scheduled_send(bare_endpoint: str) -> None:
    load = _loadgen.DealerLoad([bare_endpoint])
    try:
        # 200 a second for 0.25 s: about 50 pings, whatever the replies do.
        pings = load.open_loop("ping", 200, 0.25)
        assert 45 <= pings.completed <= 52 and pings.failed == 0
        assert all(latency > 0 for latency in pings.latencies)
        # A schedule the generator cannot keep (200,000 a second): the requests it sends
        # late are charged from when they were due, so the tail reaches far past a
        # round trip.
        late = load.open_loop("ping", 200_000, 0.05)
        assert late.p99_ms > 10
    finally:
        load.close()


# -- the PySyncObj node's load, over a stand-in for its replicated dict -------------------


class FakeReplDict:
    """Answers each `set` from another thread, as PySyncObj's tick thread does."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.sets = 0
        self.gets = 0

    def set(self, key: str, value: bytes, callback: object) -> None:
        self.data[key] = value
        self.sets += 1
        threading.Thread(target=callback, args=(None, 0)).start()  # type: ignore[arg-type]

    def get(self, key: str, default: object = None) -> object:
        self.gets += 1
        return self.data.get(key, default)


def test_the_pysyncobj_node_loads_every_record_then_mixes_reads_and_updates() -> None:
    node = importlib.import_module("_pysyncobj_node")  # pysyncobj: the test extra has it
    store = FakeReplDict()
    loaded = node.drive(
        store,
        {"cmd": "load", "records": 50, "inflight": 4, "value_bytes": 10},
        node.each_record(50),
    )
    assert loaded["completed"] == 50 and loaded["failed"] == 0
    assert sorted(store.data) == sorted(f"user{i}" for i in range(50))
    command = {
        "cmd": "ycsb", "read_proportion": 0.95, "records": 50, "seed": 3, "count": 1000,
        "inflight": 4, "value_bytes": 10, "seconds": 0.3, "warmup": 0.0,
    }  # fmt: skip
    store.sets = store.gets = 0
    mixed = node.drive(store, command, node.mixed(command))
    assert mixed["completed"] > 100
    assert len(mixed["latencies_us"]) == mixed["completed"]
    assert store.gets / (store.gets + store.sets) == pytest.approx(0.95, abs=0.03)
