#!/usr/bin/env python3
"""Wall time of short commands, alternated: start-up side by side.

usage: benches/startup.py ROUNDS COMMAND [COMMAND ...]

Each COMMAND is one argument, split on spaces; leading NAME=VALUE words are
set in its environment. Each round runs each command 15 times, one command
after the other (so a noisy minute hits every command of a round), and keeps
the median of the 15; the figure printed is the median of the round medians,
then each round's. A command that fails stops the run. Compare builds by
giving each its own command:

  benches/startup.py 5 "/bin/true" \\
      "./cordon-old audit --db st --limit 1" "./cordon-new audit --db st --limit 1"
"""
import os, statistics, subprocess, sys, time

PER_ROUND = 15


def parse(command):
    env, words = dict(os.environ), command.split()
    while words and "=" in words[0] and not words[0].startswith("/"):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return words, env


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rounds, commands = int(sys.argv[1]), sys.argv[2:]
    medians = {c: [] for c in commands}
    for _ in range(rounds):
        for command in commands:
            words, env = parse(command)
            times = []
            for _ in range(PER_ROUND):
                start = time.perf_counter()
                subprocess.run(words, env=env, stdout=subprocess.DEVNULL, check=True)
                times.append(time.perf_counter() - start)
            medians[command].append(statistics.median(times) * 1000)
    for command in commands:
        runs = " ".join(f"{m:.1f}" for m in medians[command])
        print(f"{statistics.median(medians[command]):7.2f} ms  (rounds: {runs})  {command}")


if __name__ == "__main__":
    main()
