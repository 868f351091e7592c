# Pool throughput and CPU-bound speedup; twin of bench/pool.lua.
import math
import multiprocessing as mp
import time


def report(name, value, unit):
    print(f"{name}\t{value:.4f}\t{unit}")


def square(x):
    return x * x


def _get(q, timeout):
    try:
        q.get(True, timeout)
    except Exception:
        pass


def cpu(_):
    s = 0.0
    for _ in range(2_000_000):
        s = s + math.sin(40) + math.cos(40)
    return s


if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Pool(2) as pool:
        pool.map(square, range(1000))
        for label, n in (("1e5", 100_000), ("1e6", 1_000_000)):
            xs = list(range(1, n + 1))
            t0 = time.perf_counter()
            r = pool.map(square, xs)
            dt = time.perf_counter() - t0
            assert r[-1] == n * n
            report(f"map x*x {label} ints, default chunksize", dt / n * 1e6, "us/item")

        n = 10_000
        xs = list(range(1, n + 1))
        t0 = time.perf_counter()
        r = pool.map(square, xs, 1)
        dt = time.perf_counter() - t0
        report("map x*x 1e4 ints, chunksize 1", dt / n * 1e6, "us/item")

        t0 = time.perf_counter()
        rs = [pool.apply_async(square, (i,)) for i in range(1, n + 1)]
        for i, r in enumerate(rs, 1):
            assert r.get() == i * i
        dt = time.perf_counter() - t0
        report("apply_async 1e4 tiny tasks", dt / n * 1e6, "us/task")

        for label, block in (("mp.sleep(0.3)", lambda: time.sleep(0.3)),
                             ("q:get(true, 0.3)", lambda: _get(mp.Queue(), 0.3))):
            fired = []
            t0 = time.perf_counter()
            pool.apply_async(square, (3,), callback=lambda _: fired.append(time.perf_counter()))
            block()
            pool.apply(square, (1,))
            report(f"callback latency during {label}", (fired[0] - t0) * 1000, "ms")

        items = list(range(1, 9))
        t0 = time.perf_counter()
        for x in items:
            cpu(x)
        serial = time.perf_counter() - t0
        report("cpu-bound 8x2e6 sin+cos, serial", serial, "s")
        t0 = time.perf_counter()
        pool.map(cpu, items)
        parallel = time.perf_counter() - t0
        report("cpu-bound 8x2e6 sin+cos, Pool(2)", parallel, "s")
        report("cpu-bound Pool(2) time / serial time", parallel / serial, "ratio")
