/*
** The Manager's server engine: one listening socket and many client
** connections served by poll(), in one thread. It authenticates every new
** connection (auth.h) before reading anything else from it, answers pings
** itself, and hands the Lua server loop one event at a time: a client came
** (with its identity), a request, a client left. Replies are queued per
** connection and written without blocking, so a client that does not read
** never stalls the others. Engine code: no Lua; functions return 0 or errno.
**
** Order of requests. Requests of one connection are handed over in the order
** they were sent. Across connections the engine works in rounds: it polls,
** reads everything the ready connections have, then hands over first the
** one-way requests (MP_REQ_SEND) that head each connection's buffer, then the
** rest. A client sends a one-way request and goes on without waiting; the
** bytes are in the server's socket buffer when send() returns (Unix sockets
** queue them on the receiver at once). If that client then tells another
** process, by any means, that it is done, the other's next call reaches the
** server after those bytes did. The round that reads that call also reads the
** one-way request, in the same poll or in the second, non-blocking poll made
** after the reads (poll checks descriptors one after the other, so the first
** poll may have looked at the writer just before its bytes came), and hands it
** over first. So a one-way write is seen by every call made after it, in any
** process: the same guarantee a call that waits for its reply gives.
**
** Deaths. A client that dies halfway through sending a request leaves a cut
** frame: its connection ends (EOF), the cut frame is dropped, and every whole
** frame before it is still handed over, then CLOSED (a process that writes and
** exits loses no write). A client that dies while its reply is written: the
** write fails (EPIPE) and the connection ends; nothing else waits on it. A
** connection that never finishes the handshake is dropped after 10 s. The
** server dying closes every connection, so each client's waiting call fails at
** once instead of at its timeout. An owner dying: the server sees that its
** parent changed (getppid, every 0.1 s) and mp_srv_next says MP_SRV_ORPHAN.
*/
#ifndef MP_MSERVER_H
#define MP_MSERVER_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "frame.h"

#define MP_SRV_ORPHAN (-2)     /* mp_srv_next: the owner process is gone */

enum { MP_SRV_OPEN = 1, MP_SRV_MSG, MP_SRV_CLOSED };

typedef struct mp_srv_event {
  int type;
  uint32_t id;                          /* the connection */
  uint32_t pid;                         /* OPEN: the client's pid */
  const unsigned char *ident;           /* OPEN: its identity (MP_AUTH_IDENT bytes) */
  mp_frame f;                           /* MSG: the request (valid until the next call) */
} mp_srv_event;

struct mp_srv_conn;

typedef struct mp_srv {
  int lfd;                              /* the listening socket; -1 when not listening */
  unsigned char *key;
  size_t keylen;
  uint32_t owner;                       /* the process whose death ends the server; 0: none */
  uint32_t pid;
  unsigned char token[MP_AUTH_TOKEN];
  struct mp_srv_conn **conns;
  size_t n, cap;
  void *pfds;                           /* struct pollfd[cap + 1] */
  uint32_t next_id;
  int phase;                            /* the round's stage (mserver.c) */
  size_t cursor;
  struct mp_srv_conn *held;             /* whose frame was handed over last */
  mp_frame heldf;
  double next_check;                    /* when to look at the owner again */
  double spin_until;                    /* poll without sleeping until then */
} mp_srv;

/* Takes over the listening socket lfd. 0, or ENOMEM / a getrandom error. */
int mp_srv_init(mp_srv *s, int lfd, const void *key, size_t keylen, uint32_t owner);

/*
** The next event, waiting until `deadline`: 0 with *ev, ETIMEDOUT, EINTR (end
** of a wait slice or a signal: call again), MP_SRV_ORPHAN.
*/
int mp_srv_next(mp_srv *s, double deadline, mp_srv_event *ev);

/*
** Queues a frame (header included) to connection id and writes what it can
** now. 0; ENOTCONN when that client is gone (the frame is dropped); ENOMEM.
*/
int mp_srv_reply(mp_srv *s, uint32_t id, const char *buf, size_t n);

/* Tries to write every queued reply within `deadline` (before exiting). */
void mp_srv_flush(mp_srv *s, double deadline);

/* Closes everything (idempotent); the descriptors are this process's own. */
void mp_srv_close(mp_srv *s);

#endif
