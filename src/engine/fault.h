/*
** Fault injection for the regression specs: named points in the engine where a
** test build can be told to stall, so that a window a few instructions wide is
** hit every time instead of by luck. Engine code: no Lua.
**
** Compiled in only with the CMake option MPLUA_FAULTS (scripts/test builds a
** separate build-faults/ with it; the sanitizer build has it too). In every
** other build mp_fault() is an empty macro: no getenv, no branch.
**
** MPLUA_FAULT="point=seconds[,point=seconds...]" in the environment makes the
** process sleep that long each time it passes the named point, e.g.
** MPLUA_FAULT=pool_take=0.3.
*/
#ifndef MP_FAULT_H
#define MP_FAULT_H

#ifdef MPLUA_FAULTS
void mp_fault(const char *point);
#else
#define mp_fault(point) ((void)0)
#endif

#endif
