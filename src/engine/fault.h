/*
** Fault injection for tests: named points in the engine where a test build
** (CMake -DMPLUA_FAULTS=ON, which defines MP_FAULTS) can make the process die,
** stop or pause, so that a spec hits a window of a few instructions
** deterministically instead of hoping a random kill lands there. In any other
** build MP_FAULT() compiles to nothing.
**
** The environment variable MPLUA_FAULT selects points when the process first
** passes one: a comma-separated list of
**     name[@n][=action]
** where n (default 1) is which hit of that point acts, and action is `kill`
** (SIGKILL, the default), `stop` (SIGSTOP: the test inspects the process and
** then kills or continues it) or `delay:<seconds>`. A point acts only in the
** process whose pid is in MPLUA_FAULT_PID when that variable is set, else in
** every process (forked children count their hits from what they inherited).
** A spec can also arm points in one process at run time with
** mp.core.fault_arm(spec) (same syntax; replaces what was armed), which exists
** only in these builds.
*/
#ifndef MP_FAULT_H
#define MP_FAULT_H

#ifdef MP_FAULTS
void mp_fault_point(const char *name);
void mp_fault_arm(const char *spec);
#define MP_FAULT(name) mp_fault_point(name)
#else
#define MP_FAULT(name) ((void)0)
#endif

#endif
