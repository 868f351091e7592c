# Process start+join of a trivial target; twin of bench/process.lua.
import multiprocessing as mp
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300


def noop():
    pass


def report(name, seconds, n):
    print(f"{name}\t{seconds / n * 1e3:.4f}\tms/process")


if __name__ == "__main__":
    mp.set_start_method("fork")
    for _ in range(10):
        p = mp.Process(target=noop); p.start(); p.join()

    t0 = time.perf_counter()
    for _ in range(N):
        p = mp.Process(target=noop)
        p.start()
        p.join()
    report("process start+join, sequential", time.perf_counter() - t0, N)

    t0 = time.perf_counter()
    ps = [mp.Process(target=noop) for _ in range(100)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    report("process start 100 then join 100", time.perf_counter() - t0, 100)
