/*
** Stream sockets for the Manager: listening and connecting, Unix and TCP.
** Every socket is O_CLOEXEC and non-blocking; TCP sockets have TCP_NODELAY
** (a request is one small write and waits for its answer: Nagle's delay would
** add 40 ms to it). Engine code: no Lua; functions return 0 or an errno value.
*/
#ifndef MP_SOCK_H
#define MP_SOCK_H

#include <stddef.h>

/*
** An address: a Unix socket path (anything holding a '/'), or "host:port"
** for TCP ("[::1]:port" for an IPv6 literal). Port 0 asks the kernel for a
** free port when listening.
*/
typedef struct mp_addr {
  int tcp;
  char path[108];          /* Unix: sun_path */
  char host[256];          /* TCP */
  char port[8];
} mp_addr;

/* Parses s into *a: 0, ENAMETOOLONG (a path longer than sun_path), EINVAL (malformed). */
int mp_addr_parse(const char *s, mp_addr *a);

/* A listening socket at a (SO_REUSEADDR for TCP): 0 with *fd set, or an errno. */
int mp_sock_listen(const mp_addr *a, int backlog, int *fd);

/* Writes the listening socket's address ("host:port", or the path) into buf. */
int mp_sock_name(int fd, const mp_addr *a, char *buf, size_t size);

/*
** Connects to a, waiting until `deadline` (mp_now() clock): 0 with *fd set,
** EINTR at the end of a wait slice (*fd is set to the socket in progress when
** it is >= 0: call again with it), ETIMEDOUT, EADDRNOTAVAIL when a host name
** does not resolve, or the connection's errno (ECONNREFUSED, ENOENT...).
** *fd must be -1 on the first call.
*/
int mp_sock_connect(const mp_addr *a, double deadline, int *fd);

/* Accepts one connection from a listening socket: 0, EAGAIN when none is waiting, errno. */
int mp_sock_accept(int lfd, int *fd);

#endif
