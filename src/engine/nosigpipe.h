/*
** Writes that keep SIGPIPE out of mp's own paths. Engine code: no Lua here.
**
** mp never changes the process's SIGPIPE disposition: a script whose stdout
** is closed (`mplua script | head -1`) must die of SIGPIPE exactly as lua5.4
** would. mp's own transports must not: a write to a pipe whose reader is gone
** is an EPIPE error there. Sockets get MSG_NOSIGNAL; pipe(2) writes, which
** have no such flag, go through mp_write_nosigpipe.
*/
#ifndef MP_NOSIGPIPE_H
#define MP_NOSIGPIPE_H

#include <sys/types.h>

/*
** write(2) that fails with EPIPE instead of raising SIGPIPE in this thread.
** Same return value and errno as write. A SIGPIPE that was already pending
** before the call (someone else's) is left pending.
*/
ssize_t mp_write_nosigpipe(int fd, const void *buf, size_t n);

#endif
