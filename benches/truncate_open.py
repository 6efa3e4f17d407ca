#!/usr/bin/env python3
"""Cost of opening a file with data for writing, without and with O_TRUNC.

Run natively and as the tool of `cordon run` (from a directory the default
policy lets a tool write, e.g. a fresh one under /tmp, and with python as
/usr/bin/python3): each row is the median of N `os.open` calls of a one-byte
file opened O_WRONLY, then O_WRONLY|O_TRUNC, each open followed by a one-byte
write, so that every truncation finds data (and cordon's EMFILE check before
it, `process::has_fd_room`, runs).

Usage: truncate_open.py [N]   e.g.
  taskset -c 0 python3 benches/truncate_open.py 3000
  taskset -c 0 cordon run -- /usr/bin/python3 .../truncate_open.py 3000
"""
import os
import statistics
import sys
import time


def median_open_us(flags, n):
    took = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fd = os.open("f", flags)
        took.append(time.perf_counter_ns() - start)
        os.write(fd, b"x")
        os.close(fd)
    return statistics.median(took) / 1000


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with open("f", "w") as f:
        f.write("x")
    for _ in range(3):
        plain = median_open_us(os.O_WRONLY, n)
        trunc = median_open_us(os.O_WRONLY | os.O_TRUNC, n)
        print(f"plain {plain:.2f} us  trunc {trunc:.2f} us  diff {trunc - plain:.2f}")


if __name__ == "__main__":
    main()
