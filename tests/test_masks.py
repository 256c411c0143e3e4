"""Replay's masks: what varies legitimately is masked, anything else still differs."""

from forager.trajectories.masks import first_difference, mask


def test_masks_hide_timings_addresses_temp_names_pids_and_dates():
    a = ("== 2 passed in 0.12s ==\n<Foo object at 0x7f3a2c1b9e80>\n/tmp/pytest-of-root/pytest-3/x0/f.txt\n"
         "pid=1234\n-rw-r--r-- 1 root root 66 Jan  1  2000 calc.py\nbuilt 2024-05-01T12:00:03Z at 1715000000.5\n"
         "tmpab12cd_x\nRan 3 tests in 0.001s")
    b = ("== 2 passed in 3.40s ==\n<Foo object at 0x55d0aa01c2f0>\n/tmp/pytest-of-root/pytest-9/x0/f.txt\n"
         "pid=99\n-rw-r--r-- 1 root root 66 May 13 02:40 calc.py\nbuilt 2026-11-30T03:00:00Z at 1764471600.0\n"
         "tmpzz99yy_q\nRan 3 tests in 1.250s")
    assert a != b and mask(a) == mask(b)


def test_masks_leave_real_differences():
    for before, after in (("2 passed", "1 passed, 1 failed"), ("return a + b", "return a - b"),
                          ("version 1.2.3", "version 1.2.4"), ("[exit code 1]", "[exit code 2]"),
                          ("/repo/calc.py", "/repo/calc2.py")):
        assert mask(before) != mask(after)
    assert first_difference("a\nb\nc", "a\nB\nc") == "line 2: 'b' | 'B'"
    assert first_difference("a", "a\nmore") == "line 2: '<missing>' | 'more'"


BENCH_A = """tests/test_benchmarks.py ...F
------------------------------------------ benchmark: 3 tests ------------------------------------------
Name (time in ns)            Min                        Max                   Mean            Rounds
--------------------------------------------------------------------------------------------------------
test_clamp              760.9997 (1.0)      52,613,604.9994 (1.09)      3,532.6653 (1.0)       71809
test_apnumber           901.0000 (1.18)     90,873,957.0004 (1.89)      8,159.9329 (2.31)      92679
test_fractional       2,945.9989 (3.87)     48,203,933.9986 (1.0)      32,570.6474 (9.22)      13125
--------------------------------------------------------------------------------------------------------

Legend:
1 failed, 3 passed in 6.69s"""
# the same run again: other timings, so other widths, another unit, another order, other rounds
BENCH_B = """tests/test_benchmarks.py ...F
-------------------------------------- benchmark: 3 tests --------------------------------------
Name (time in us)          Min                  Max                Mean          Rounds
------------------------------------------------------------------------------------------------
test_apnumber           0.8010 (1.0)      9,873.9570 (1.0)       8.1599 (1.0)      102679
test_clamp              0.9609 (1.20)    12,613.6049 (1.28)      3.5326 (>1000.0)   61809
test_fractional         2.9459 (3.68)    18,203.9339 (1.84)     32.5706 (3.99)      13125
------------------------------------------------------------------------------------------------

Legend:
1 failed, 3 passed in 5.01s"""


def test_benchmark_tables_are_masked_as_timings_but_their_tests_are_not():
    assert mask(BENCH_A) == mask(BENCH_B)
    assert "<BENCHMARK ROW test_clamp>" in mask(BENCH_A) and "benchmark: 3 tests" in mask(BENCH_A)
    # a table cut by `tail` (no title or header) still masks its rows
    for first in (3, 4):  # from the rule above the rows (its length is a timing too), or from the rows
        cut = lambda text: "\n".join(text.split("\n")[first:])  # noqa: E731
        assert mask(cut(BENCH_A)) == mask(cut(BENCH_B)), first
    # what is not a timing still differs: a test that is gone, another count, the outcome line
    assert mask(BENCH_A) != mask(BENCH_B.replace("test_fractional", "test_other"))
    assert mask(BENCH_A) != mask(BENCH_B.replace("3 tests", "4 tests"))
    assert mask(BENCH_A) != mask(BENCH_B.replace("1 failed, 3 passed", "4 passed"))
    # a dash rule outside a table is left alone
    assert mask("a\n" + "-" * 30 + "\nb") == "a\n" + "-" * 30 + "\nb"
