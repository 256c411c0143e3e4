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
