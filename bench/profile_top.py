"""Top lines of a py-spy profile: ``py-spy record --format raw`` -> self and total shares.

    py-spy record --pid <server pid> --duration 15 --rate 200 --format raw -o sse.raw
    python bench/profile_top.py sse.raw [--top 25]
"""

from __future__ import annotations

import argparse
import collections


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("raw")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(args.raw) as raw:
        for line in raw:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = [f for f in stack.split(";") if not f.startswith("process ")
                      and not f.startswith("thread ")]
            samples += n
            if frames:
                own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    print(f"{samples} samples\n\nself %  function (file:line)")
    for frame, n in own.most_common(args.top):
        print(f"{100 * n / samples:6.1f}  {frame}")
    print("\ntotal %  function (file:line)")
    for frame, n in total.most_common(args.top):
        print(f"{100 * n / samples:6.1f}  {frame}")


if __name__ == "__main__":
    main()
