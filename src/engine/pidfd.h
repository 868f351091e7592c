/*
** pidfd_open(2), in one place: the fd, or -1 where pidfds are missing
** (kernels before 5.3; valgrind 3.19, which does not know the call) or turned
** off with MPLUA_NO_PIDFD=1, so that specs cover every fallback (a sentinel
** pipe, signalling and watching by pid) on any kernel. The fd is
** close-on-exec (pidfd_open sets that itself).
**
** Engine code: no Lua.
*/
#ifndef MP_PIDFD_H
#define MP_PIDFD_H
#include <sys/types.h>

int mp_pidfd_open(pid_t pid);

#endif
