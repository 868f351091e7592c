# Process start+join of a trivial target; twin of bench/process.lua.
import multiprocessing as mp
import os
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7


def noop():
    pass


def report(name, value, unit):
    print(f"{name}\t{value:.4f}\t{unit}")


def mp_round():
    t0 = time.perf_counter()
    for _ in range(N):
        p = mp.Process(target=noop)
        p.start()
        p.join()
    return (time.perf_counter() - t0) / N * 1e3


def raw_round():
    t0 = time.perf_counter()
    for _ in range(N):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return (time.perf_counter() - t0) / N * 1e3


if __name__ == "__main__":
    mp.set_start_method("fork")
    for _ in range(10):
        p = mp.Process(target=noop); p.start(); p.join()

    best = best_raw = float("inf")
    for _ in range(ROUNDS):
        best = min(best, mp_round())
        best_raw = min(best_raw, raw_round())
    report("process start+join, sequential", best, "ms/process")
    report("raw fork+_exit+wait, same language", best_raw, "ms/process")
    report("start+join / raw fork (goal <= 1.1)", best / best_raw, "x")

    t0 = time.perf_counter()
    ps = [mp.Process(target=noop) for _ in range(100)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    report("process start 100 then join 100", (time.perf_counter() - t0) / 100 * 1e3, "ms/process")
