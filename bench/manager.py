# Manager proxies with multiprocessing (fork); twin of bench/manager.lua.
import multiprocessing as mp
import os
import time

QUICK = os.environ.get("BENCH_QUICK") == "1"
N = 2000 if QUICK else 5000
ROUNDS = 2 if QUICK else 3

def report(name, value, unit):
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)

def best_of(rounds, fn):
    return min(fn() for _ in range(rounds))

def pairs_loop(d, n):
    for i in range(n):
        d["k"] = i
        d["k"]

def table_pairs_loop(d, n):
    t = [1]
    for _ in range(n):
        d["k"] = t
        d["k"]

def append_loop(l, n):
    for i in range(n):
        l.append(i)
    len(l)

def one_client(make, loop):
    def run():
        obj = make()
        t0 = time.perf_counter()
        loop(obj, N)
        return (time.perf_counter() - t0) / N * 1e6
    return best_of(ROUNDS, run)

def client(ready, obj, loop):
    ready.wait()
    loop(obj, N)

def two_clients(make, loop):
    def run():
        obj = make()
        ready = mp.Barrier(3)
        ps = [mp.Process(target=client, args=(ready, obj, loop)) for _ in range(2)]
        for p in ps: p.start()
        ready.wait()
        t0 = time.perf_counter()
        for p in ps: p.join()
        return (time.perf_counter() - t0) / (2 * N) * 1e6
    return best_of(ROUNDS, run)

if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Manager() as mgr:
        report("1 client: d[k] = v + d[k] pair", one_client(mgr.dict, pairs_loop), "us/pair")
        report("1 client: l:append(v)", one_client(mgr.list, append_loop), "us/op")
        report("1 client: d[k] = {1} + d[k] pair (both wait)", one_client(mgr.dict, table_pairs_loop), "us/pair")
        report("2 clients: d[k] = v + d[k] pair", two_clients(mgr.dict, pairs_loop), "us/pair")
        report("2 clients: l:append(v)", two_clients(mgr.list, append_loop), "us/op")
