/*
** Connections: the two ends of mp.Pipe, message framing over file descriptors.
** A frame is a 4-byte little-endian length and the payload; lengths of 2^32-1
** and above are written as 0xffffffff and an 8-byte length. Reads are
** buffered (one read() brings in many small frames); each frame is written
** with one write(), so the peer can see it at once, with no flush to forget.
**
** Duplex pipes are two pipe(2)s rather than a socketpair: a pipe write costs
** about a third of a socket write here (DESIGN.md). EOF is the kernel's: a
** read returns 0 once every copy, in every process, of the peer's write end is
** closed, which is what recv's EOFError promises.
** Engine code: no Lua; functions return 0 or an errno value.
*/
#ifndef MP_CONN_H
#define MP_CONN_H

#include <stddef.h>
#include <stdint.h>

#define MP_CONN_EOF (-1)          /* returned when the peer is gone and nothing is left */
#define MP_CONN_MAXHDR 12

typedef struct mp_conn {
  int rfd, wfd;                   /* -1 when this end cannot read / write, or is closed */
  char *buf;                      /* unread bytes are buf[pos..end) */
  size_t pos, end, cap;
} mp_conn;

/* Makes the two ends. Duplex: both read and write. Otherwise a reads, b writes. */
int mp_conn_pipe(mp_conn *a, mp_conn *b, int duplex);

/* Closes this process's fds and frees the buffer (idempotent). */
void mp_conn_close(mp_conn *c);

/* Writes the frame header for `len` right-aligned ending at hdr + MP_CONN_MAXHDR; returns its size. */
size_t mp_conn_header(char hdr[MP_CONN_MAXHDR], uint64_t len);

/*
** Writes all of p[0..n) then q[0..m) (q may be NULL). Returns EINTR only
** before the first byte went out (the caller checks for interrupts and calls
** again); once started it finishes. EPIPE when the reader is gone.
*/
int mp_conn_write(mp_conn *c, const char *p, size_t n, const char *q, size_t m);

/*
** Makes sure a whole frame is buffered, waiting until `deadline`. On 0,
** *payload and *len give it (valid until the next call); mp_conn_consume then
** drops it. Returns MP_CONN_EOF, ETIMEDOUT, EINTR, ENOMEM or an errno.
*/
int mp_conn_frame(mp_conn *c, double deadline, const char **payload, uint64_t *len);
void mp_conn_consume(mp_conn *c);

/* 0 when something (data or EOF) can be read, ETIMEDOUT, EINTR. */
int mp_conn_poll(mp_conn *c, double deadline);

/* Bytes buffered but not yet taken. */
static inline size_t mp_conn_buffered(const mp_conn *c) { return c->end - c->pos; }

#endif
