"""common/timing.py and measure/memory.py: the one way every command and benchmark times calls and measures the
memory of a process running an export."""

import time

import pytest

from rwkv_edge.common.timing import median_ms, time_calls
from rwkv_edge.measure.memory import process_memory
from rwkv_edge.runtime.errors import RWKVEdgeError


def test_time_calls_times_only_the_timed_calls():
    calls = []

    def run():
        calls.append(time.perf_counter())
        time.sleep(0.002)

    seconds = time_calls(run, 3, untimed=2)
    assert len(calls) == 5 and len(seconds) == 3
    assert all(0.002 <= s < 1 for s in seconds)
    assert 2.0 <= median_ms(seconds) < 1e3  # in ms


def test_median_ms_leaves_out_the_warm_up_when_more_samples_remain():
    assert median_ms([0.010, 0.010, 0.001, 0.001, 0.001], warmup=2) == pytest.approx(1.0)
    assert median_ms([0.010, 0.010, 0.001, 0.001], warmup=2) == pytest.approx(5.5)  # too short: all kept
    assert median_ms([0.003, 0.001, 0.002]) == pytest.approx(2.0)


def test_process_memory_of_a_fresh_process(exported):
    _, out = exported("7", 2, 64, 16, 301)
    got = process_memory(out, "fp32", threads=1, prompt_tokens=8, steps=2)
    assert 20 < got.peak_rss_mib < 2000  # MiB of Python, numpy, onnxruntime and a tiny model
    assert got.pss_mib is None or got.pss_mib <= got.peak_rss_mib  # what it holds after never exceeds its peak
    with pytest.raises(RWKVEdgeError, match="measuring the memory of the int4 graph failed: .*int4"):
        process_memory(out, "int4", steps=1)
