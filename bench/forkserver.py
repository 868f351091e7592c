# Start+join of a trivial process from a parent holding 10 MB, then 500 MB, of
# Python data, with the fork and forkserver start methods; twin of bench/forkserver.lua.
import multiprocessing as mp
import sys
import time

N_SMALL = int(sys.argv[1]) if len(sys.argv) > 1 else 200
N_BIG = int(sys.argv[2]) if len(sys.argv) > 2 else 40


def noop():
    pass


data = []
size = 0


def grow(mb):
    # bytes objects of ~100 bytes (about 133 with their header) in one list, touched as made
    global size
    while size < mb * 1024 * 1024:
        b = b"x" * 90 + str(len(data)).encode()
        data.append(b)
        size += sys.getsizeof(b) + 8


def bench(label, method, count):
    ctx = mp.get_context(method)
    for _ in range(5):
        p = ctx.Process(target=noop); p.start(); p.join()
    t0 = time.perf_counter()
    for _ in range(count):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    print(f"start+join, {label} parent, {method}\t{(time.perf_counter() - t0) / count * 1e3:.4f}\tms/process", flush=True)


if __name__ == "__main__":
    mp.get_context("forkserver").Process(target=noop).start()   # the server starts while small
    grow(10)
    bench("10 MB", "fork", N_SMALL)
    bench("10 MB", "forkserver", N_SMALL)
    grow(500)
    bench("500 MB", "fork", N_BIG)
    bench("500 MB", "forkserver", N_BIG)
