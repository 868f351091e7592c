# Locks and shared values with multiprocessing (fork); twin of bench/sync.lua.
import multiprocessing as mp
import time

def report(name, value, unit):
    print(f"{name}\t{value:.4g}\t{unit}", flush=True)

# Python's locks are named POSIX semaphores in /dev/shm, created then unlinked; a
# process that cleans /dev/shm meanwhile (a spec run on a shared machine) makes the
# creation fail with FileNotFoundError. Such a round is retried.
def retry(fn):
    while True:
        try:
            return fn()
        except FileNotFoundError:
            pass

def best_of(rounds, fn):
    return min(retry(fn) for _ in range(rounds))

N = 1000000

# Method calls as a program writes them (lock.acquire(), as Lua's lock:acquire()).
def pairs(lock):
    def run():
        t0 = time.perf_counter()
        for _ in range(N):
            lock.acquire(); lock.release()
        return (time.perf_counter() - t0) / N * 1e9
    return run

def pairs_bound(lock):
    def run():
        acquire, release = lock.acquire, lock.release
        t0 = time.perf_counter()
        for _ in range(N):
            acquire(); release()
        return (time.perf_counter() - t0) / N * 1e9
    return run

def locked(counter, n):
    lk = counter.get_lock()
    for _ in range(n):
        with lk:
            counter.value += 1

def two_procs(n, body):
    counter = mp.Value("i", 0)
    t0 = time.perf_counter()
    ps = [mp.Process(target=body, args=(counter, n)) for _ in range(2)]
    for p in ps: p.start()
    for p in ps: p.join()
    ms = (time.perf_counter() - t0) * 1e3
    assert counter.value == 2 * n
    return ms

def increments():
    v = mp.Value("i", 0)
    lk = v.get_lock()
    t0 = time.perf_counter()
    for _ in range(N):
        lk.acquire()
        v.value += 1
        lk.release()
    return (time.perf_counter() - t0) / N * 1e9

def create_locks():
    t0 = time.perf_counter()
    locks = [mp.Lock() for _ in range(10000)]
    us = (time.perf_counter() - t0) / 10000 * 1e6
    del locks
    return us

if __name__ == "__main__":
    mp.set_start_method("fork")
    report("lock acquire+release, uncontended", best_of(10, pairs(retry(mp.Lock))), "ns/pair")
    report("lock acquire+release, methods in locals", best_of(10, pairs_bound(retry(mp.Lock))), "ns/pair")
    def floor():
        s = "x"
        t0 = time.perf_counter()
        for _ in range(N):
            s.isascii(); s.isascii()
        return (time.perf_counter() - t0) / N * 1e9
    report("two calls of a trivial C method (str:len()), the floor", best_of(10, floor), "ns/pair")
    report("rlock acquire+release, uncontended", best_of(10, pairs(retry(mp.RLock))), "ns/pair")
    report("semaphore acquire+release, uncontended", best_of(10, pairs(retry(lambda: mp.Semaphore(1)))), "ns/pair")
    report("value increment under its lock, 1e6", best_of(3, increments), "ns/op")
    report("create 10000 locks", best_of(3, create_locks), "us/lock")
    report("2 procs x 1e4 locked increments (start+join)", best_of(5, lambda: two_procs(10000, locked)), "ms")
    report("2 procs x 1e5 locked increments (start+join)", best_of(3, lambda: two_procs(100000, locked)), "ms")
