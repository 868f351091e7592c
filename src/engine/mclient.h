/*
** The client end of a Manager connection: connect, the handshake (auth.h),
** then requests and their replies (frame.h). One per process and server: a
** forked child never uses its parent's (the binding checks the owner pid).
**
** Sequence numbers pair a reply with its request. A call that gave up (its
** timeout passed, or Ctrl-C) leaves its reply to come later; the next call
** skips every reply whose number is not its own, so the connection stays
** usable. A request cut short halfway through its bytes would leave the
** stream undecodable: sends finish what they started (see mp_client_send) and
** a connection where that failed is marked broken and never used again.
** Engine code: no Lua.
*/
#ifndef MP_MCLIENT_H
#define MP_MCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "frame.h"
#include "sock.h"

typedef struct mp_client {
  int fd;                   /* -1: closed */
  int phase;                /* handshake progress, see mclient.c */
  int broken;               /* a frame was cut: close, never reuse */
  uint32_t seq;             /* the last call's number */
  mp_rbuf rb;
  unsigned char nonce[MP_AUTH_NONCE];
  uint32_t server_pid;
  unsigned char token[MP_AUTH_TOKEN];
} mp_client;

/* The safe empty state (nothing to free). */
void mp_client_init(mp_client *c);

/*
** Connects and authenticates, until `deadline`. Resumable: EINTR means call
** again (after running signal handlers) with the same arguments. 0 when ready;
** EACCES: the server refused our key; EPROTO: the server did not prove it
** knows the key, or does not speak this protocol; MP_FRAME_EOF: the server
** closed the connection; ETIMEDOUT; EADDRNOTAVAIL (unknown host); or the
** socket's errno (ECONNREFUSED, ENOENT...).
*/
int mp_client_connect(mp_client *c, const mp_addr *a, const void *key, size_t keylen,
                      const unsigned char ident[MP_AUTH_IDENT], double deadline);

/*
** Sends one whole frame (header included). EINTR only before its first byte
** went out; once started it is finished, whatever the signals, or the
** connection is marked broken (ETIMEDOUT, EPIPE...).
*/
int mp_client_send(mp_client *c, const char *buf, size_t n, double deadline);

/*
** Waits for the reply numbered seq, skipping older ones: 0 with *f (then
** mp_client_consume), MP_FRAME_EOF, ETIMEDOUT, EINTR (call again), EMSGSIZE...
*/
int mp_client_recv(mp_client *c, uint32_t seq, double deadline, mp_frame *f);
void mp_client_consume(mp_client *c, const mp_frame *f);

/* Closes this process's descriptor and frees the buffer (idempotent). */
void mp_client_close(mp_client *c);

#endif
